// Package flight collapses concurrent work by key: one call does the work,
// the callers that arrive while it runs wait for its result instead of
// doing it again (duplicate suppression, as groupcache's singleflight).
//
// The work runs inside the flight, so it can re-check the cache first: a
// caller that arrives just after another call filled the cache joins no
// call (none is running) and starts one, which finds the cache full. This
// is what makes a flight safe to put in front of a cache ("re-check inside
// the flight").
//
// Two shapes are offered:
//   - Do runs a function on a goroutine of its own, on a context detached
//     from every caller's: each caller waits on its own context and leaves
//     alone, and the work is cancelled only when every caller has left
//     (with Group.Linger, never: it runs to its end). A panic in the
//     function becomes every caller's error. DoShared is Do reporting
//     whether the outcome was shared, as golang.org/x/sync/singleflight.
//   - Lead makes the first caller the leader, who does the work itself
//     (say, streaming it to its own reader) and reports the outcome with
//     End; the others Wait. A leader that gives up (its context ended, it
//     stopped reading) ends its call with an error wrapping ErrLeaderGone,
//     which tells the waiters that the work was not done, rather than
//     failed: they may try again.
package flight

import (
	"context"
	"errors"
	"sync"

	"github.com/strata-oci/strata/internal/safego"
)

// ErrLeaderGone is wrapped by the error of a call whose leader gave up
// before the work was done: not an answer, so a waiter may try again.
var ErrLeaderGone = errors.New("flight: the leader gave up")

// Group collapses calls by key. The zero value is ready to use; a Group
// must not be copied after first use, and is used with one shape (Do, or
// Lead) for all its keys. It is safe for concurrent use.
type Group[T any] struct {
	// OnJoin, if set, is called (under the group's lock: it must not call
	// the group) whenever a caller joins a call in progress.
	OnJoin func()
	// Linger, if set, keeps Do's work running when every caller has left:
	// its context then ends only when the function returns (the function
	// may end it sooner by means of its own, say a Close), the key stays
	// taken until then, and callers that come meanwhile join it.
	Linger bool

	mu sync.Mutex
	m  map[string]*Call[T]
}

// Call is one run of the work for a key.
type Call[T any] struct {
	g    *Group[T]
	key  string
	done chan struct{} // closed once val and err are set
	val  T
	err  error

	// Do only: the callers still waiting, the callers that ever joined,
	// and the work's cancel.
	waiters int
	joins   int
	cancel  context.CancelFunc
	once    sync.Once
}

// join returns the call in progress for key, or a new one (leader = true)
// registered under key. It runs under g.mu.
func (g *Group[T]) join(key string) (c *Call[T], leader bool) {
	if c, ok := g.m[key]; ok {
		c.joins++
		if g.OnJoin != nil {
			g.OnJoin()
		}
		return c, false
	}
	if g.m == nil {
		g.m = make(map[string]*Call[T])
	}
	c = &Call[T]{g: g, key: key, done: make(chan struct{})}
	g.m[key] = c
	return c, true
}

// forget removes c from the group if it is still key's call, so the next
// caller starts afresh.
func (c *Call[T]) forget() {
	c.g.mu.Lock()
	if c.g.m[c.key] == c {
		delete(c.g.m, c.key)
	}
	c.g.mu.Unlock()
}

// Do runs fn once for all concurrent callers of key and returns its
// result; joined reports whether this caller joined a call another caller
// started. fn runs on a goroutine of its own with a context that keeps
// ctx's values but not its cancellation; that context ends when every
// caller waiting for the call has left (their contexts ended), and the key
// is then free for a new call. A caller whose ctx ends returns ctx's error
// at once. A panic in fn is recovered and returned to every caller as an
// error wrapping safego.ErrPanic.
func (g *Group[T]) Do(ctx context.Context, key string, fn func(context.Context) (T, error)) (v T, joined bool, err error) {
	v, leader, _, err := g.do(ctx, key, fn)
	return v, !leader, err
}

// DoShared is Do reporting, instead of whether this caller joined, whether
// the outcome it returns was shared: the call had callers besides the one
// that started it (true for that one too, as singleflight's "shared"). A
// caller that left before the outcome (ctx's error) gets false.
func (g *Group[T]) DoShared(ctx context.Context, key string, fn func(context.Context) (T, error)) (v T, shared bool, err error) {
	v, _, shared, err = g.do(ctx, key, fn)
	return v, shared, err
}

func (g *Group[T]) do(ctx context.Context, key string, fn func(context.Context) (T, error)) (v T, leader, shared bool, err error) {
	g.mu.Lock()
	c, leader := g.join(key)
	if leader {
		wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		c.cancel = cancel
		go func() {
			defer cancel()
			v, err := run(wctx, fn)
			c.end(v, err)
		}()
	}
	c.waiters++
	g.mu.Unlock()

	select {
	case <-c.done:
		// joins is final: no one joins a call after it ended.
		return c.val, leader, c.joins > 0, c.err
	case <-ctx.Done():
		g.mu.Lock()
		c.waiters--
		if c.waiters == 0 && c.cancel != nil && !g.Linger {
			// Nobody is left to use the result: stop the work, and let
			// the next caller start afresh rather than join a cancelled
			// call.
			c.cancel()
			if g.m[key] == c {
				delete(g.m, key)
			}
		}
		g.mu.Unlock()
		var zero T
		return zero, leader, false, ctx.Err()
	}
}

// run calls fn, turning a panic into its error.
func run[T any](ctx context.Context, fn func(context.Context) (T, error)) (v T, err error) {
	defer safego.Recover(&err, "flight")
	return fn(ctx)
}

// Lead returns the call in progress for key, or starts one with the caller
// as its leader (leader = true). The leader does the work itself and must
// end the call with End exactly once, whatever happens (the key stays taken
// until then); the others Wait for it.
func (g *Group[T]) Lead(key string) (c *Call[T], leader bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.join(key)
}

// End publishes the outcome of a call started by Lead to its waiters and
// frees the key. A leader that gives up without an outcome passes an error
// wrapping ErrLeaderGone. Calls after the first do nothing.
func (c *Call[T]) End(v T, err error) { c.end(v, err) }

func (c *Call[T]) end(v T, err error) {
	c.once.Do(func() {
		c.forget()
		c.val, c.err = v, err
		close(c.done)
	})
}

// Wait waits for the call's outcome, or for ctx to end (then ctx's error).
func (c *Call[T]) Wait(ctx context.Context) (T, error) {
	select {
	case <-c.done:
		return c.val, c.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}
