package tiers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-oci/strata/blob"
)

// Repairer is implemented by a tier that can replace a copy of a blob it
// holds when that copy read back wrong and Put would keep it (Put is
// idempotent: a tier that believes it holds d may return without reading).
// Repair stores size bytes from r under d over whatever the tier holds,
// verifying r exactly like Put (nothing is committed unless r is d). It
// returns an error wrapping blob.ErrUnsupported when the tier could not
// replace its copy (a remote server that keeps what it has).
//
// The stack looks for it on a tier as the stack holds it (Instrument keeps
// it); a tier without it is repaired by Delete and Put.
type Repairer interface {
	Repair(ctx context.Context, d blob.Digest, size int64, r io.Reader) error
}

// Bad copies are remembered for badCopyTTL, at most maxBadCopies at once
// (the oldest marks go first).
const (
	badCopyTTL   = 10 * time.Minute
	maxBadCopies = 4096
)

// badCopies remembers which tier served wrong bytes for which digest, so
// that reads skip that copy until it is repaired or the mark expires. It is
// safe for concurrent use and costs one atomic load per lookup while no
// copy is marked.
type badCopies struct {
	n  atomic.Int64 // len(m), read without the lock
	mu sync.Mutex
	m  map[badKey]*badMark
}

type badMark struct {
	exp       time.Time // when the mark expires
	repairing bool      // a repair is under way (see claim)
}

type badKey struct {
	idx int // the tier's index in the root stack
	d   blob.Digest
}

// has reports whether e's copy of d is marked bad. Sources are never
// marked.
func (b *badCopies) has(e *stackEntry, d blob.Digest) bool {
	if e.idx < 0 || b.n.Load() == 0 {
		return false
	}
	k := badKey{e.idx, d}
	b.mu.Lock()
	defer b.mu.Unlock()
	mk, ok := b.m[k]
	if ok && time.Now().After(mk.exp) {
		delete(b.m, k)
		b.n.Store(int64(len(b.m)))
		return false
	}
	return ok
}

// claim reports whether the caller may repair e's bad copy of d: it is
// marked and nobody else is repairing it. A claim ends with clear (the copy
// was repaired) or unclaim.
func (b *badCopies) claim(e *stackEntry, d blob.Digest) bool {
	if !b.has(e, d) {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	mk := b.m[badKey{e.idx, d}]
	if mk == nil || mk.repairing {
		return false
	}
	mk.repairing = true
	return true
}

// unclaim ends a claim whose repair failed: the copy stays marked.
func (b *badCopies) unclaim(e *stackEntry, d blob.Digest) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if mk := b.m[badKey{e.idx, d}]; mk != nil {
		mk.repairing = false
	}
}

// mark marks e's copy of d bad; it reports whether it was not marked yet.
func (b *badCopies) mark(e *stackEntry, d blob.Digest) bool {
	if e.idx < 0 {
		return false
	}
	k := badKey{e.idx, d}
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = make(map[badKey]*badMark)
	}
	mk, had := b.m[k]
	fresh := !had || now.After(mk.exp)
	if !had && len(b.m) >= maxBadCopies {
		b.evictLocked(now)
	}
	if !had {
		mk = &badMark{}
		b.m[k] = mk
	}
	mk.exp = now.Add(badCopyTTL)
	b.n.Store(int64(len(b.m)))
	return fresh
}

// evictLocked drops expired marks, and the oldest one if none expired.
func (b *badCopies) evictLocked(now time.Time) {
	var oldest badKey
	var oldestExp time.Time
	for k, mk := range b.m {
		if now.After(mk.exp) {
			delete(b.m, k)
			continue
		}
		if oldestExp.IsZero() || mk.exp.Before(oldestExp) {
			oldest, oldestExp = k, mk.exp
		}
	}
	if len(b.m) >= maxBadCopies {
		delete(b.m, oldest)
	}
}

// clear forgets the mark of e's copy of d.
func (b *badCopies) clear(e *stackEntry, d blob.Digest) {
	if b.n.Load() == 0 {
		return
	}
	b.mu.Lock()
	delete(b.m, badKey{e.idx, d})
	b.n.Store(int64(len(b.m)))
	b.mu.Unlock()
}

// markBad remembers that tier e served wrong bytes for d (err says how).
func (r *stackRoot) markBad(e *stackEntry, d blob.Digest, err error) {
	if !r.bad.mark(e, d) {
		return
	}
	if e.badCopies != nil {
		e.badCopies.Inc()
	}
	r.log.Warn("tier served a bad copy; skipping it until it is repaired",
		"stack", r.name, "tier", e.name, "digest", string(d), "err", err)
}

// noteOpenErr marks e's copy of d bad when its Open found it corrupt.
func (s *Stack) noteOpenErr(e *stackEntry, d blob.Digest, err error) {
	if errors.Is(err, blob.ErrMismatch) && e.idx >= 0 {
		s.root.markBad(e, d, err)
	}
}

// countFailover counts a read that went on from next after failed broke.
func (s *Stack) countFailover(failed, next *stackEntry) {
	if m := s.root.metrics; m != nil {
		m.failovers.WithLabelValues(s.root.name, failed.name).Inc()
	}
}

// putUpper writes a fill's bytes into upper tier e: a Put, or a repair when
// e's copy is marked bad (nothing, if another repair of it is under way).
func (s *Stack) putUpper(ctx context.Context, e *stackEntry, repair bool, d blob.Digest, size int64, r io.Reader) error {
	if !repair {
		return e.Tier.Put(ctx, d, size, r)
	}
	if !s.root.bad.claim(e, d) {
		return nil
	}
	return s.repairEntry(ctx, e, d, size, r)
}

// repairEntry writes r (d's bytes, verified by the tier as it writes) over
// e's bad copy of d, and clears the mark once the tier took them. The caller
// holds the claim on the copy (badCopies.claim).
func (s *Stack) repairEntry(ctx context.Context, e *stackEntry, d blob.Digest, size int64, r io.Reader) error {
	var err error
	if rp, ok := e.Tier.(Repairer); ok {
		err = rp.Repair(ctx, d, size, r)
	} else {
		if derr := e.Tier.Delete(ctx, d); derr != nil && !errors.Is(derr, blob.ErrNotFound) && !errors.Is(derr, blob.ErrUnsupported) {
			err = derr
		} else {
			err = e.Tier.Put(ctx, d, size, r)
		}
	}
	result := "ok"
	switch {
	case err == nil:
		s.root.bad.clear(e, d)
		s.root.log.Info("bad copy repaired", "stack", s.root.name, "tier", e.name, "digest", string(d))
	case errors.Is(err, blob.ErrUnsupported):
		result = "refused"
		s.root.bad.unclaim(e, d)
		s.root.log.Warn("bad copy not repaired: the tier kept it; it stays skipped",
			"stack", s.root.name, "tier", e.name, "digest", string(d), "err", err)
	default:
		result = "error"
		s.root.bad.unclaim(e, d)
		s.root.log.Warn("bad copy not repaired", "stack", s.root.name, "tier", e.name, "digest", string(d), "err", err)
	}
	if m := s.root.metrics; m != nil {
		m.repairs.WithLabelValues(e.name, result).Inc()
	}
	s.root.flights.wrote(d)
	return err
}

// repairLater repairs the bad copies of d in the given tiers in the
// background, reading d from the view's other tiers (never from a source:
// a repair must not cost a source download). A tier that can no longer be
// read from stays marked, and the next fill through it repairs it.
func (s *Stack) repairLater(d blob.Digest, size int64, bad []*stackEntry) {
	r := s.root
	r.repairMu.Lock()
	defer r.repairMu.Unlock()
	if r.repairsClosed {
		return
	}
	r.repairs.Add(1)
	go func() {
		defer r.repairs.Done()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-r.repairStop:
				cancel()
			case <-ctx.Done():
			}
		}()
		for _, e := range bad {
			if !r.bad.claim(e, d) {
				continue // repaired meanwhile, or being repaired
			}
			if err := s.repairFromTiers(ctx, e, d, size); err != nil && ctx.Err() == nil {
				r.log.Debug("repair: no good copy to read", "stack", r.name, "tier", e.name, "digest", string(d), "err", err)
			}
		}
	}()
}

// repairFromTiers reads d from the view's tiers other than e (and other than
// tiers marked bad for d) and repairs e's copy with it.
func (s *Stack) repairFromTiers(ctx context.Context, e *stackEntry, d blob.Digest, size int64) error {
	var ents []*stackEntry
	for _, g := range s.ents {
		if g.idx >= 0 && g != e {
			ents = append(ents, g)
		}
	}
	var m misses
	fo, info, err := s.openFrom(ctx, d, ents, &m)
	switch {
	case err == nil && fo == nil:
		err = m.err(s.root.name, "repair", string(d))
	case err == nil && size >= 0 && info.Size != size:
		fo.Close()
		err = fmt.Errorf("stack %q: repair %s: %w: tier %q holds %d bytes, want %d", s.root.name, d, blob.ErrMismatch, info.Tier, info.Size, size)
	case err == nil:
		defer fo.Close()
		return s.repairEntry(ctx, e, d, info.Size, fo)
	}
	s.root.bad.unclaim(e, d)
	return err
}
