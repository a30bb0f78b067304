package ext4

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// workLockName is the file under WorkDir on which every Converter using
// that WorkDir holds a shared lock (flock) for its lifetime, so that
// RemoveStale can tell whether it is alone.
const workLockName = "lock"

// staleFence is how far before the start of the oldest work in flight a
// temporary file must have been last written for RemoveStale to take it
// as a leftover (file times are coarser than the clock).
const staleFence = 2 * time.Second

// budgetGrace is how recently used (handed out) an image may be and still
// be removed by the budget: an image handed out less than this long ago,
// here or by another process sharing WorkDir, stays, so a caller that has
// not opened it yet still finds it.
var budgetGrace = 30 * time.Second

// workState tracks what of WorkDir this Converter is using: the shared
// lock on WorkDir/lock, and the start times of its work in flight
// (conversions and downloads, which alone write to WorkDir/tmp).
type workState struct {
	mu     sync.Mutex
	lock   *os.File // nil: no lock (the file system has no flock)
	next   int64
	starts map[int64]time.Time

	budgetMu sync.Mutex // one budget pass at a time
}

// lockWorkDir takes a shared lock on dir/lock, held until unlockWorkDir.
// Where the file system cannot lock, the Converter runs without it (and
// RemoveStale removes only old leftovers).
func (w *workState) lockWorkDir(dir string) {
	f, err := os.OpenFile(filepath.Join(dir, workLockName), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return
	}
	if err := flock(f, syscall.LOCK_SH); err != nil {
		f.Close()
		return
	}
	w.mu.Lock()
	w.lock = f
	w.mu.Unlock()
}

// unlockWorkDir releases the lock of lockWorkDir (idempotent).
func (w *workState) unlockWorkDir() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.lock != nil {
		w.lock.Close() // releases the flock
		w.lock = nil
	}
}

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			return err
		}
	}
}

// beginWork records work in flight that may write to WorkDir/tmp; the
// returned function ends it.
func (c *Converter) beginWork() (end func()) {
	w := &c.work
	w.mu.Lock()
	if w.starts == nil {
		w.starts = map[int64]time.Time{}
	}
	w.next++
	id := w.next
	w.starts[id] = time.Now()
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		delete(w.starts, id)
		w.mu.Unlock()
	}
}

// RemoveStale removes from WorkDir/tmp what no conversion or download in
// flight is writing: temporary images, spool and sidecar files left by a
// process that was killed (a conversion leaves hundreds of MB there). It
// returns how many entries it removed and the disk space they took.
//
// Entries of any age go when this Converter is the only one using WorkDir
// (every Converter holds a shared lock on WorkDir/lock while it lives;
// several processes, or hosts with different roots, may share one
// WorkDir): then all that is not this Converter's own work in flight is
// a leftover. Its work in flight is known (each conversion or download
// registers while it runs): while some runs, only entries last written
// before the oldest of them started are removed. When another Converter
// uses WorkDir too, or the file system cannot lock, only entries older
// than a day go, as New does. Safe for concurrent use; conversions
// starting meanwhile wait for the pass to end (a directory scan).
func (c *Converter) RemoveStale(ctx context.Context) (files int, bytes int64, err error) {
	w := &c.work
	w.mu.Lock()
	defer w.mu.Unlock()
	cutoff := time.Now().Add(-staleAfter)
	if w.lock != nil {
		// Alone if the shared lock converts to an exclusive one. A failed
		// conversion drops the shared lock (flock(2)): take it again.
		if flock(w.lock, syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			defer flock(w.lock, syscall.LOCK_SH)
			cutoff = time.Now()
			for _, t := range w.starts {
				if f := t.Add(-staleFence); f.Before(cutoff) {
					cutoff = f
				}
			}
		} else if err := flock(w.lock, syscall.LOCK_SH); err != nil {
			w.lock.Close()
			w.lock = nil
		}
	}
	ents, err := os.ReadDir(c.tmpDir)
	if err != nil {
		return 0, 0, fmt.Errorf("ext4: remove stale temporary files: %w", err)
	}
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return files, bytes, fmt.Errorf("ext4: remove stale temporary files: %w", err)
		}
		fi, err := e.Info()
		if err != nil || !fi.ModTime().Before(cutoff) {
			continue
		}
		size := diskBytes(fi)
		if fi.IsDir() {
			size = 0
		}
		if err := os.RemoveAll(filepath.Join(c.tmpDir, e.Name())); err != nil {
			continue // another process may be removing it too
		}
		files++
		bytes += size
	}
	return files, bytes, nil
}

// diskBytes returns the bytes fi takes on disk (holes excluded), else its
// size.
func diskBytes(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// Usage is the occupancy of WorkDir/images.
type Usage struct {
	Images int   // images with their sidecar
	Bytes  int64 // disk space of the images (holes excluded)
	Budget int64 // Config.Budget (0: no bound)
}

// Usage reports the images handed out in WorkDir/images and the disk
// space they take, against Config.Budget. An image that is a hard link of
// the Stager's copy of its blob (see Config.Stager) counts here and in the
// tier's usage, though its disk space is taken once; removing it frees
// that space only once the tier has evicted its copy too (and the other
// way round).
func (c *Converter) Usage() (Usage, error) {
	imgs, err := c.listImages()
	if err != nil {
		return Usage{}, err
	}
	u := Usage{Images: len(imgs), Budget: max(c.cfg.Budget, 0)}
	for _, im := range imgs {
		u.Bytes += im.bytes
	}
	return u, nil
}

// localImage is one image of WorkDir/images.
type localImage struct {
	id    string
	bytes int64     // disk space of the image
	used  time.Time // last use: the sidecar's modification time
}

// listImages returns the images of WorkDir/images that have a sidecar.
func (c *Converter) listImages() ([]localImage, error) {
	ents, err := os.ReadDir(c.imgDir)
	if err != nil {
		return nil, fmt.Errorf("ext4: images: %w", err)
	}
	var out []localImage
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".ext4")
		if !ok || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		mi, err := os.Stat(filepath.Join(c.imgDir, id+".json"))
		if err != nil {
			continue // being published, or left for Prune
		}
		out = append(out, localImage{id: id, bytes: diskBytes(fi), used: mi.ModTime()})
	}
	return out, nil
}

// used records that dv's local image was just handed out (its sidecar's
// modification time is its last use) and applies the budget, keeping it.
func (c *Converter) used(dv derivation) {
	now := time.Now()
	_ = os.Chtimes(c.metaPath(dv), now, now)
	if c.cfg.Budget > 0 {
		_, _, _ = c.applyBudget(context.Background(), dv.id)
	}
}

// ApplyBudget removes local images, least recently used first, until those
// in WorkDir/images take at most Config.Budget bytes of disk (0: it does
// nothing). Materialize applies it after every call. Images handed out in
// the last 30 seconds (here or by another process sharing WorkDir) stay,
// so a caller that has not opened its image yet still finds it: usage may
// exceed the budget by those. Removal unlinks: a process that has an image
// open (or attached to a VM) keeps reading it, and the disk space returns
// when it closes it; the derived blob stays in the Store, so the next
// Materialize downloads it instead of converting. It returns how many
// images it removed and their disk space.
func (c *Converter) ApplyBudget(ctx context.Context) (removed int, freed int64, err error) {
	return c.applyBudget(ctx, "")
}

func (c *Converter) applyBudget(ctx context.Context, keep string) (removed int, freed int64, err error) {
	budget := c.cfg.Budget
	if budget <= 0 {
		return 0, 0, nil
	}
	c.work.budgetMu.Lock()
	defer c.work.budgetMu.Unlock()
	imgs, err := c.listImages()
	if err != nil {
		return 0, 0, err
	}
	var total int64
	for _, im := range imgs {
		total += im.bytes
	}
	sort.Slice(imgs, func(i, j int) bool { return imgs[i].used.Before(imgs[j].used) })
	recent := time.Now().Add(-budgetGrace)
	for _, im := range imgs {
		if total <= budget {
			break
		}
		if err := ctx.Err(); err != nil {
			return removed, freed, fmt.Errorf("ext4: budget: %w", err)
		}
		if im.id == keep || im.used.After(recent) {
			continue
		}
		if err := c.removeLocal(im.id); err != nil {
			continue
		}
		total -= im.bytes
		removed++
		freed += im.bytes
	}
	return removed, freed, nil
}

// removeLocal removes the sidecar (first: without it the image is not
// used) and the image of id.
func (c *Converter) removeLocal(id string) error {
	if err := os.Remove(filepath.Join(c.imgDir, id+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Remove(filepath.Join(c.imgDir, id+".ext4")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
