package tiers

import (
	"context"
	"io"
	"sync"

	"github.com/strata-oci/strata/blob"
)

// flightGroup collapses concurrent fills of one digest in one view of a
// stack. All views of a stack share one group; keys carry the view, so a
// view never joins a fill that reads tiers it excludes.
type flightGroup struct {
	mu sync.Mutex
	m  map[string]*flight
}

// flight is one fill in progress: the re-check of the view's tiers, and, on a
// hit below the top, the tee that streams the blob to its first caller (the
// leader) while writing it into the tiers above.
//
// Its work runs on its own context, detached from every caller's: callers
// hold references (the leader until it stops reading, each waiter while it
// waits) and the work is cancelled only when the last reference goes before
// the source has been read completely. Once the source is read and verified,
// the commits into the upper tiers finish regardless.
type flight struct {
	group *flightGroup
	key   string
	ctx   context.Context
	stop  context.CancelFunc

	done  chan struct{} // closed when waiters may act on err
	err   error         // the fill's outcome; nil: re-check the tiers yourself
	retry bool          // err is not a clean answer: waiters try again

	mu         sync.Mutex
	refs       int
	settled    bool // source fully read, or the flight is done: no more cancelling
	leadReady  chan struct{}
	lead       *leadResult
	leaderGone bool
}

// leadResult is what the flight hands its leader.
type leadResult struct {
	rc   io.ReadCloser
	info blob.Info
	err  error
	// interrupt makes a blocked Read of rc return; safe to call at any time.
	interrupt func()
}

// join returns the flight for key, starting one (leader = true) if none is in
// progress. The caller holds one reference either way.
func (g *flightGroup) join(ctx context.Context, key string) (f *flight, leader bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f, ok := g.m[key]; ok {
		f.mu.Lock()
		f.refs++
		f.mu.Unlock()
		return f, false
	}
	fctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	f = &flight{
		group:     g,
		key:       key,
		ctx:       fctx,
		stop:      stop,
		done:      make(chan struct{}),
		refs:      1,
		leadReady: make(chan struct{}),
	}
	if g.m == nil {
		g.m = make(map[string]*flight)
	}
	g.m[key] = f
	return f, true
}

// release drops one reference; the last one cancels an unsettled flight.
func (f *flight) release() {
	f.mu.Lock()
	f.refs--
	cancel := f.refs == 0 && !f.settled
	f.mu.Unlock()
	if cancel {
		f.stop()
	}
}

// settle marks the point after which the flight's work is no longer cancelled
// by callers leaving.
func (f *flight) settle() {
	f.mu.Lock()
	f.settled = true
	f.mu.Unlock()
}

// finish publishes err to the waiters and removes the flight from its group,
// so later callers start afresh. retry tells waiters that err is the
// flight's failure rather than an answer (a clean miss, invalid input).
func (f *flight) finish(err error, retry bool) {
	f.group.mu.Lock()
	if f.group.m[f.key] == f {
		delete(f.group.m, f.key)
	}
	f.group.mu.Unlock()
	f.settle()
	f.err, f.retry = err, retry
	close(f.done)
}

// handOff gives the leader its result. It reports false, and the caller must
// clean up r, if the leader has already left.
func (f *flight) handOff(r leadResult) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.leaderGone {
		return false
	}
	f.lead = &r
	close(f.leadReady)
	return true
}

// leaderWanted reports whether the leader is still waiting for a hand-off.
func (f *flight) leaderWanted() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.leaderGone
}

// awaitLead waits for the leader's result or for ctx to end. On ctx's end
// the leader leaves (left = true): a result handed off meanwhile is closed
// and the leader's reference dropped.
func (f *flight) awaitLead(ctx context.Context) (res leadResult, left bool) {
	select {
	case <-f.leadReady:
		return *f.lead, false
	case <-ctx.Done():
	}
	f.mu.Lock()
	lead := f.lead
	if lead == nil {
		f.leaderGone = true
	}
	f.mu.Unlock()
	if lead != nil && lead.rc != nil {
		lead.rc.Close() // drops the leader's reference
	} else {
		f.release()
	}
	return leadResult{}, true
}
