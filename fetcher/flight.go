package fetcher

import (
	"context"
	"sync"

	"github.com/strata-oci/strata/internal/safego"
)

// group collapses concurrent calls with one key into one run of the work,
// on a context detached from every caller: each caller waits on its own
// context and leaves alone; the work is cancelled when the last caller has
// left. Unlike x/sync/singleflight, a caller that gives up neither cancels
// the work for the others nor waits for it.
type group[T any] struct {
	mu sync.Mutex
	m  map[string]*call[T]
	// onJoin, if set, is called (under the group's lock) whenever a caller
	// joins work in progress.
	onJoin func()
}

type call[T any] struct {
	done    chan struct{}
	val     T
	err     error
	waiters int
	cancel  context.CancelFunc
}

// do runs fn once for all concurrent callers of key and returns its result;
// joined reports whether this caller joined work another caller started.
func (g *group[T]) do(ctx context.Context, key string, fn func(context.Context) (T, error)) (v T, joined bool, err error) {
	g.mu.Lock()
	if g.m == nil {
		g.m = make(map[string]*call[T])
	}
	c, joined := g.m[key]
	if joined && g.onJoin != nil {
		g.onJoin()
	}
	if !joined {
		wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		c = &call[T]{done: make(chan struct{}), cancel: cancel}
		g.m[key] = c
		go func() {
			defer cancel()
			c.val, c.err = runSafe(wctx, fn)
			g.mu.Lock()
			if g.m[key] == c {
				delete(g.m, key)
			}
			g.mu.Unlock()
			close(c.done)
		}()
	}
	c.waiters++
	g.mu.Unlock()

	select {
	case <-c.done:
		return c.val, joined, c.err
	case <-ctx.Done():
		g.mu.Lock()
		c.waiters--
		if c.waiters == 0 {
			// Nobody is left to use the result: stop the work, and let the
			// next caller start afresh rather than join a cancelled call.
			c.cancel()
			if g.m[key] == c {
				delete(g.m, key)
			}
		}
		g.mu.Unlock()
		var zero T
		return zero, joined, ctx.Err()
	}
}

// runSafe runs fn, turning a panic in it into its error (wrapping
// safego.ErrPanic): the work runs on a goroutine of its own, where a panic
// would end the process, and every waiter gets the error instead.
func runSafe[T any](ctx context.Context, fn func(context.Context) (T, error)) (v T, err error) {
	defer safego.Recover(&err, "fetch")
	return fn(ctx)
}
