package tiers

import (
	"context"
	"io"
	"sync"
	"sync/atomic"

	"github.com/strata-oci/strata/blob"
)

// flightGroup collapses concurrent fills of one digest in one view of a
// stack. All views of a stack share one group; keys carry the view, so a
// view never joins a fill that reads tiers it excludes.
//
// It also counts completed writes per digest (striped: digests that share
// a stripe share a count), so that a caller can tell whether a flight it
// joined looked at the tiers before a write that completed before the caller
// came (see flight.gen).
type flightGroup struct {
	mu     sync.Mutex
	m      map[string]*flight
	writes [writeStripes]atomic.Uint64
}

// writeStripes is the number of write counters; a collision only costs a
// waiter one needless look of its own.
const writeStripes = 256

// written returns the write count of d's stripe.
func (g *flightGroup) written(d blob.Digest) uint64 { return g.writes[stripe(d)].Load() }

// wrote records that a write of d into the tiers has completed (or ended:
// counting one that failed only costs a re-check). It must be called after
// the write's tier calls have returned and before the writer's caller can
// see the write as done.
func (g *flightGroup) wrote(d blob.Digest) { g.writes[stripe(d)].Add(1) }

// stripe is FNV-1a of d, reduced to a stripe index.
func stripe(d blob.Digest) int {
	h := uint32(2166136261)
	for i := 0; i < len(d); i++ {
		h ^= uint32(d[i])
		h *= 16777619
	}
	return int(h % writeStripes)
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
	// gen is the write count of the flight's digest when the flight began,
	// before it looked at any tier. A caller that joined at a higher count
	// came after a write completed that the flight may have missed, so the
	// flight's miss is no answer for it.
	gen uint64

	done  chan struct{} // closed when waiters may act on err
	err   error         // the fill's outcome; nil: re-check the tiers yourself
	retry bool          // err is not a clean answer: waiters try again
	// filled: the flight read its source to the verified end and the
	// tiers took what they would (set before done is closed).
	filled bool

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

// join returns the flight for key (a fill of d), starting one (leader =
// true) if none is in progress, and gen, the write count of d as the caller
// joined. The caller holds one reference either way.
func (g *flightGroup) join(ctx context.Context, key string, d blob.Digest) (f *flight, leader bool, gen uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	gen = g.written(d)
	if f, ok := g.m[key]; ok {
		f.mu.Lock()
		f.refs++
		f.mu.Unlock()
		return f, false, gen
	}
	fctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	f = &flight{
		group:     g,
		key:       key,
		ctx:       fctx,
		stop:      stop,
		done:      make(chan struct{}),
		gen:       gen,
		refs:      1,
		leadReady: make(chan struct{}),
	}
	if g.m == nil {
		g.m = make(map[string]*flight)
	}
	g.m[key] = f
	return f, true, gen
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
