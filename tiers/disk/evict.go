package disk

import (
	"context"
	"fmt"
	"sort"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// touch records an access to hex in memory; the flusher writes it later.
func (t *Tier) touch(hex string, r row) {
	t.pendMu.Lock()
	t.pending[hex] = r
	n := len(t.pending)
	t.pendMu.Unlock()
	if n >= t.cfg.FlushThreshold {
		select {
		case t.flushCh <- struct{}{}:
		default:
		}
	}
}

// newestLocked returns the latest of atime and any buffered access time of
// hex; the caller holds pendMu.
func (t *Tier) newestLocked(hex string, atime int64) int64 {
	if p, ok := t.pending[hex]; ok && p.atime > atime {
		atime = p.atime
	}
	if p, ok := t.flushing[hex]; ok && p.atime > atime {
		atime = p.atime
	}
	return atime
}

// flusher writes buffered access times every FlushInterval or when the
// buffer reaches FlushThreshold.
func (t *Tier) flusher(ctx context.Context) {
	defer t.wg.Done()
	tick := time.NewTicker(t.cfg.FlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-t.flushCh:
		}
		if err := t.flush(); err != nil {
			t.cfg.Logger.Warn("disk tier: flush access times", "tier", t.cfg.Name, "err", err)
		}
	}
}

// flush writes the buffered access times of blobs that still have a row,
// in one Badger WriteBatch. Holding flushMu keeps row deletions out, so a
// flush never brings back the row of a deleted blob.
func (t *Tier) flush() error {
	t.flushMu.Lock()
	defer t.flushMu.Unlock()
	t.pendMu.Lock()
	empty := len(t.pending) == 0
	t.pendMu.Unlock()
	if empty || t.indexWritable() != nil {
		return nil // on a full filesystem they wait in memory
	}
	t.pendMu.Lock()
	p := t.pending
	if len(p) == 0 {
		t.pendMu.Unlock()
		return nil
	}
	t.pending = make(map[string]row, len(p))
	t.flushing = p
	t.pendMu.Unlock()
	defer func() {
		t.pendMu.Lock()
		t.flushing = nil
		t.pendMu.Unlock()
	}()

	return t.withDB(func(db *badger.DB) error {
		live := make(map[string]row, len(p))
		err := db.View(func(txn *badger.Txn) error {
			for hex, a := range p {
				r, found, err := getRow(txn, hex)
				if err != nil {
					return err
				}
				if found && a.atime > r.atime {
					r.atime = a.atime
					live[hex] = r
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		wb := db.NewWriteBatch()
		defer wb.Cancel()
		for hex, r := range live {
			if err := wb.Set(blobKey(hex), encodeRow(r)); err != nil {
				return err
			}
		}
		return wb.Flush()
	})
}

// maybeEvict wakes the evictor if usage passed the high watermark (never
// with Config.NoEvict).
func (t *Tier) maybeEvict() {
	if !t.cfg.NoEvict && t.cfg.Budget > 0 && t.bytes.Load() > t.highBytes() {
		select {
		case t.evictCh <- struct{}{}:
		default:
		}
	}
}

func (t *Tier) highBytes() int64 { return int64(t.cfg.HighWatermark * float64(t.cfg.Budget)) }
func (t *Tier) lowBytes() int64  { return int64(t.cfg.LowWatermark * float64(t.cfg.Budget)) }

// evictor runs eviction passes in the background down to the low watermark.
func (t *Tier) evictor(ctx context.Context) {
	defer t.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.evictCh:
		}
		if t.bytes.Load() <= t.highBytes() {
			continue
		}
		n, freed, err := t.EvictTo(ctx, t.lowBytes())
		if err != nil && ctx.Err() == nil {
			t.cfg.Logger.Warn("disk tier: eviction", "tier", t.cfg.Name, "err", err)
		}
		t.cfg.Logger.Debug("disk tier: evicted", "tier", t.cfg.Name, "blobs", n, "bytes", freed)
	}
}

// EvictTo removes least recently used blobs until the tier holds at most
// target bytes, and returns how many blobs and bytes it removed. A blob
// accessed after the pass began is skipped. Readers of an evicted blob that
// already opened it read on undisturbed. Refs are not touched.
func (t *Tier) EvictTo(ctx context.Context, target int64) (evicted int, freed int64, err error) {
	return t.evict(ctx, func() bool { return t.bytes.Load() > target }, nil)
}

// EvictOlderThan removes every blob last accessed before cutoff and
// returns how many blobs and bytes it removed.
func (t *Tier) EvictOlderThan(ctx context.Context, cutoff time.Time) (evicted int, freed int64, err error) {
	c := cutoff.UnixNano()
	return t.evict(ctx, func() bool { return true }, func(r row) bool { return r.atime < c })
}

// evict removes candidates (all blobs, or those eligible says yes to),
// oldest access first, while more says so.
func (t *Tier) evict(ctx context.Context, more func() bool, eligible func(row) bool) (evicted int, freed int64, err error) {
	t.evictMu.Lock()
	defer t.evictMu.Unlock()
	if !more() {
		return 0, 0, nil
	}
	type cand struct {
		hex string
		r   row
	}
	var cands []cand
	err = t.scanRows(ctx, func(hex string, r row) error {
		if eligible == nil || eligible(r) {
			cands = append(cands, cand{hex, r})
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].r.atime < cands[j].r.atime })
	for _, c := range cands {
		if !more() {
			break
		}
		if err := ctx.Err(); err != nil {
			return evicted, freed, fmt.Errorf("disk %q: evict: %w", t.cfg.Name, err)
		}
		mu := t.stripe(c.hex)
		mu.Lock()
		cur, found, err := t.lookup(c.hex)
		existed, size := false, int64(0)
		if err == nil && found && cur.atime <= c.r.atime { // else gone or used since the scan
			existed, size, err = t.removeLocked(c.hex)
		}
		mu.Unlock()
		if err != nil {
			return evicted, freed, fmt.Errorf("disk %q: evict sha256:%s: %w", t.cfg.Name, c.hex, err)
		}
		if existed {
			evicted++
			freed += size
		}
	}
	return evicted, freed, nil
}
