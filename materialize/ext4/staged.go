package ext4

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/safego"
	"github.com/strata-oci/strata/manifest"
)

// Stager is a local tier that a conversion writes its image into in
// place, so the image is written once (tiers/disk.Tier is one). It must be
// one of the tiers of Config.Store and Config.LocalStore: the converter
// stores the image there itself and hands out a hard link of the committed
// file, and then stores it through Store (or LocalStore) in the
// background, where the Stager already holding it costs nothing.
type Stager interface {
	blob.Tier
	// Stage returns a new, empty, private staging file, open for reading
	// and writing, on the tier's file system. A crash leaves nothing
	// visible (the tier removes leftovers).
	Stage(ctx context.Context) (*os.File, error)
	// CommitStaged makes the staging file's content the blob of its digest
	// (hashed, made read-only and renamed into place, all or nothing) and
	// returns its Info. The committed file is never written again. It may
	// return before the file is on disk (the converter fsyncs its handout
	// itself, see localMeta.Unsynced). It fails wrapping blob.ErrTooLarge
	// for a blob the tier declines, leaving the file staged and readable.
	CommitStaged(ctx context.Context, f *os.File) (blob.Info, error)
	// DiscardStaged closes the staging file and removes it unless it was
	// committed; it is called once for every file Stage returned.
	DiscardStaged(f *os.File) error
	// OpenBlobFile opens the file of a blob the tier holds, read-only:
	// the blob as committed, never written by the tier, though it may
	// have rotted (the caller hashes it before handing it out).
	OpenBlobFile(ctx context.Context, d blob.Digest) (*os.File, blob.Info, error)
}

// convertStaged is convert writing the image straight into a staging
// file of Config.Stager: one full write of the image. The image is hashed
// and committed by the Stager; the local image is a hard link of the very
// same file (read-only) unless dv's options change its bytes (free space),
// which need a copy of their own (a reflink where the file system can);
// the Store gets the image in the background (see storeLater).
func (c *Converter) convertStaged(ctx context.Context, img manifest.Image, dv derivation) (*Result, error) {
	st := c.cfg.Stager
	f, err := st.Stage(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("ext4: convert %s: %w", dv.digest, err)
		}
		// A broken or full local tier does not fail the call.
		c.cfg.Logger.Warn("ext4: cannot write the image into the local tier; converting in WorkDir", "image", dv.digest, "tier", st.Name(), "err", err)
		return c.convertCopy(ctx, img, dv)
	}
	background := false // f handed over to storeLater
	defer func() {
		if !background {
			st.DiscardStaged(f)
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := c.buildRetry(ctx, img, f, dv); err != nil {
		return nil, err
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("ext4: %w", err)
	}
	// Read-only before any link exists: the handout is never writable.
	if err := f.Chmod(0o400); err != nil {
		return nil, fmt.Errorf("ext4: %w", err)
	}
	same, err := growKeeps(f, size, dv.free)
	if err != nil {
		return nil, fmt.Errorf("ext4: add free space to %s: %w", dv.digest, err)
	}
	var handout string // a hard link of f in WorkDir/tmp
	if same {
		p := filepath.Join(c.tmpDir, "convert-"+randomName()+".ext4")
		if err := os.Link(f.Name(), p); err == nil {
			handout = p
		} else {
			// WorkDir on another file system, say: copied below.
			c.cfg.Logger.Debug("ext4: cannot link the image into WorkDir; copying it", "image", dv.digest, "err", err)
		}
	}
	published := false
	defer func() {
		if handout != "" && !published {
			os.Remove(handout)
		}
	}()

	if handout != "" {
		// Handed out now, hashed and committed after (see finishPending):
		// the caller does not wait for the hash (578 MB: 0.36 s here),
		// which can only start now, the writer having written the image's
		// first blocks last.
		p := c.beginPending(dv)
		r := &Result{Size: size, pending: p}
		if err := c.publishPath(dv, handout, r, false); err != nil {
			c.endPending(dv, p, "", err)
			return nil, err
		}
		published = true
		background = true
		c.storeLater(dv, f, "", size, true, p)
		return r, nil
	}

	d, err := c.commitStaged(ctx, dv, f, size)
	if err != nil {
		return nil, err
	}

	// The local image is a copy of its own (free space added, or no link
	// possible).
	r := &Result{Size: size, Digest: d}
	tmp, err := os.CreateTemp(c.tmpDir, "convert-*.ext4")
	if err != nil {
		return nil, fmt.Errorf("ext4: %w", err)
	}
	ok := false
	defer discardUnless(&ok, tmp)
	if _, err := copyInto(tmp, f, size); err != nil {
		return nil, fmt.Errorf("ext4: copy image: %w", err)
	}
	if r.Size, err = c.grow(tmp, dv); err != nil {
		return nil, err
	}
	if err := tmp.Sync(); err != nil { // trusted without re-hashing after a crash
		return nil, fmt.Errorf("ext4: sync image: %w", err)
	}
	if err := c.publish(dv, tmp, r); err != nil {
		return nil, err
	}
	ok = true
	background = true
	c.storeLater(dv, f, d, size, false, nil)
	return r, nil
}

// commitStaged hashes and commits f, dv's image staged in the Stager,
// and puts its derivation ref there (the Store gets blob and ref later,
// blob first). A Stager that declines the image as too large leaves it
// usable here: it is hashed, for the Store's other tiers.
func (c *Converter) commitStaged(ctx context.Context, dv derivation, f *os.File, size int64) (blob.Digest, error) {
	st := c.cfg.Stager
	info, err := st.CommitStaged(ctx, f)
	switch {
	case err == nil:
		if err := st.PutRef(ctx, dv.key, c.signedRef(dv.key, info.Digest, size)); err != nil {
			return "", fmt.Errorf("ext4: put derivation ref for %s to %s: %w", dv.digest, st.Name(), err)
		}
		return info.Digest, nil
	case errors.Is(err, blob.ErrTooLarge):
		d, err := hashFile(ctx, f, size)
		if err != nil {
			return "", fmt.Errorf("ext4: hash image: %w", err)
		}
		return d, nil
	default:
		return "", fmt.Errorf("ext4: put derived image of %s to %s: %w", dv.digest, st.Name(), err)
	}
}

// pendingImage is a local image handed out before it was hashed (see
// convertStaged); done is closed when its hash ended, with its digest or
// the error that left it unhashed.
type pendingImage struct {
	done   chan struct{}
	digest blob.Digest
	err    error
}

// beginPending records that dv's local image is about to be handed out
// unhashed: local hands it out meanwhile, Prune leaves it, Flush waits
// for it.
func (c *Converter) beginPending(dv derivation) *pendingImage {
	p := &pendingImage{done: make(chan struct{})}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending == nil {
		c.pending = make(map[string]*pendingImage)
	}
	c.pending[dv.id] = p
	return p
}

// endPending ends p with its digest or the error that left it unhashed.
func (c *Converter) endPending(dv derivation, p *pendingImage, d blob.Digest, err error) {
	p.digest, p.err = d, err
	c.mu.Lock()
	if c.pending[dv.id] == p {
		delete(c.pending, dv.id)
	}
	c.mu.Unlock()
	close(p.done)
}

// finishPending hashes and commits f, the staged image of dv handed out
// before it was hashed, puts its derivation ref to the Stager, writes the
// digest into the local image's sidecar, and ends p. It is not cancelled
// by Close, which waits for it: local work of well under a second, without
// which the image would be converted again after a restart.
func (c *Converter) finishPending(dv derivation, f *os.File, size int64, p *pendingImage) (d blob.Digest, err error) {
	defer func() { c.endPending(dv, p, d, err) }()
	defer safego.Recover(&err, "ext4: hash "+string(dv.digest))
	if d, err = c.commitStaged(context.Background(), dv, f, size); err != nil {
		return "", err
	}
	err = c.editMeta(dv, f, func(m *localMeta) bool {
		if m.Digest != "" {
			return false
		}
		m.Digest = d
		return true
	})
	if err != nil {
		return "", err
	}
	return d, nil
}

// storeLater stores the image in f (staged in Config.Stager: committed,
// or declined by it) and then its derivation ref in dv's store, in the
// background, and discards f when done. The caller has its image already;
// a failure is logged and counted (Stats.BackgroundStoreFailures), never
// returned. One store runs per derivation; Close cancels them, Flush
// waits for them. The store reads f through a verifying reader: the
// bytes leaving this host are hashed again, whatever happened to the
// file since it was committed. (No internal/flight call: nobody waits for
// a store's outcome, a second store of one derivation is dropped rather
// than joined, and Flush waits for every store running, which a
// flight.Group does not list.) With syncLocal, f is also the local image,
// published before it was on disk: it is fsynced meanwhile and then
// marked so (see markSynced), even when the store itself is dropped.
func (c *Converter) storeLater(dv derivation, f *os.File, d blob.Digest, size int64, syncLocal bool, p *pendingImage) {
	discard := func() { c.cfg.Stager.DiscardStaged(f) }
	id := dv.key.String()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		if p != nil {
			c.endPending(dv, p, "", fmt.Errorf("ext4: converter closed: %w", context.Canceled))
		}
		discard()
		return
	}
	_, busy := c.storing[id] // a store of this derivation runs: not twice
	if busy && !syncLocal {
		c.mu.Unlock()
		discard()
		return
	}
	var done chan struct{}
	if !busy {
		if c.storing == nil {
			c.storing = make(map[string]chan struct{})
		}
		done = make(chan struct{})
		c.storing[id] = done
	}
	c.running.Add(1)
	c.mu.Unlock()
	go func() {
		defer func() {
			discard()
			if done != nil {
				c.mu.Lock()
				delete(c.storing, id)
				c.mu.Unlock()
				close(done)
			}
			c.running.Done()
		}()
		var synced sync.WaitGroup
		defer synced.Wait() // f stays open until markSynced is done with it
		if syncLocal {
			synced.Go(func() {
				var err error
				defer safego.Recover(&err, "ext4: sync the image of "+string(dv.digest))
				if err = c.markSynced(dv, f); err != nil {
					c.cfg.Logger.Warn("ext4: the local image is not on disk; it is taken from the store again after a machine crash", "image", dv.digest, "err", err)
				}
			})
		}
		var err error
		if p != nil {
			if d, err = c.finishPending(dv, f, size, p); err != nil {
				c.cfg.Logger.Warn("ext4: the image handed out could not be hashed and stored; the next call converts it again", "image", dv.digest, "tier", c.cfg.Stager.Name(), "err", err)
				if done != nil {
					c.stores.Add(1)
					c.storeFailures.Add(1)
					c.mOutcome.WithLabelValues("store_failed").Inc()
				}
				return
			}
		}
		if done == nil {
			return
		}
		defer func() {
			c.stores.Add(1)
			if err != nil {
				c.storeFailures.Add(1)
				c.mOutcome.WithLabelValues("store_failed").Inc()
				c.cfg.Logger.Warn("ext4: storing the derived image in the background failed; it stays local", "image", dv.digest, "derived", d, "store", dv.store.Name(), "err", err)
			}
		}()
		defer safego.Recover(&err, "ext4: store "+string(d))
		ctx, cancel := context.WithCancel(c.base)
		defer cancel()
		err = dv.store.Put(ctx, d, size, blob.NewVerifier(io.NewSectionReader(f, 0, size), d, size, nil))
		switch {
		case err == nil:
			err = dv.store.PutRef(ctx, dv.key, c.signedRef(dv.key, d, size))
		case errors.Is(err, blob.ErrTooLarge):
			err = nil // declined by every tier: local only, as before
		}
	}()
}

// Flush waits until the images converted so far are stored in the Store
// (the background stores of Materialize have ended, successfully or not;
// see Stats.BackgroundStoreFailures), or until ctx ends. Call it before
// Close where the shared tiers should have every image (a short-lived
// process); Close cancels the stores still running.
func (c *Converter) Flush(ctx context.Context) error {
	c.mu.Lock()
	var waits []chan struct{}
	for _, ch := range c.storing {
		waits = append(waits, ch)
	}
	for _, p := range c.pending {
		waits = append(waits, p.done)
	}
	c.mu.Unlock()
	for _, ch := range waits {
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("ext4: flush: %w", ctx.Err())
		}
	}
	return nil
}

// hashFile returns the digest of f's first size bytes.
func hashFile(ctx context.Context, f *os.File, size int64) (blob.Digest, error) {
	h := sha256.New()
	if _, err := io.CopyBuffer(h, withCtx(ctx, io.NewSectionReader(f, 0, size)), make([]byte, 1<<20)); err != nil {
		return "", err
	}
	return blob.NewDigestFromHash(h), nil
}

// errChanges stops growKeeps' dry run at the first write that would
// change the image.
var errChanges = errors.New("the options change the image")

// dryRun is a file finishFS edits without changing it: a write of bytes
// other than those already there, or a new size, fails with errChanges.
type dryRun struct {
	f    *os.File
	size int64
}

func (d dryRun) ReadAt(p []byte, off int64) (int, error) { return d.f.ReadAt(p, off) }

func (d dryRun) WriteAt(p []byte, off int64) (int, error) {
	cur := make([]byte, len(p))
	if n, _ := d.f.ReadAt(cur, off); n != len(p) || !bytes.Equal(cur, p) {
		return 0, errChanges
	}
	return len(p), nil
}

func (d dryRun) Truncate(size int64) error {
	if size != d.size {
		return errChanges
	}
	return nil
}

// growKeeps reports whether adding the free space of spec to the image
// in f (of size bytes) leaves its bytes as they are, so that the stored
// image can be handed out as it is. It changes nothing.
func growKeeps(f *os.File, size int64, spec growSpec) (bool, error) {
	_, err := finishFS(dryRun{f, size}, spec)
	if errors.Is(err, errChanges) {
		return false, nil
	}
	return err == nil, err
}

// downloadStaged reads the derived blob ref names through dv's store to
// its verified end, discarding the bytes: the store (a tiers.Stack) writes
// it back into its local tier, the Stager, as it streams, and its end
// comes only after that write-back committed. The image is then the
// Stager's file, handed out by linkStaged: one full write of it, where a
// copy into WorkDir next to the write-back made two. ok is false when the
// Stager did not take the blob (too large for it, say, or a store that
// writes nothing back); the caller copies it then.
func (c *Converter) downloadStaged(ctx context.Context, dv derivation, ref blob.Ref, absent bool) (r *Result, ok bool, err error) {
	if c.cfg.Stager == nil || dv.store == blob.Tier(c.cfg.Stager) {
		return nil, false, nil
	}
	// File timestamps come from the kernel's coarse clock, up to a tick
	// behind time.Now: a file created from here on may look born earlier.
	start := time.Now().Add(-bornSlack)
	rc, _, err := dv.store.Open(ctx, ref.Digest)
	if err != nil {
		return nil, false, fmt.Errorf("ext4: open derived image %s from %s: %w", ref.Digest, dv.store.Name(), err)
	}
	v := blob.NewVerifier(rc, ref.Digest, ref.Size, nil)
	_, err = io.CopyBuffer(io.Discard, withCtx(ctx, v), make([]byte, 1<<20))
	rc.Close()
	if err != nil {
		return nil, false, fmt.Errorf("ext4: download derived image %s from %s: %w", ref.Digest, dv.store.Name(), err)
	}
	// The Stager did not hold the blob before (absent): a file of it born
	// since start is the write-back of the stream just verified, committed
	// by the tier only once that stream verified, so it is not hashed a
	// second time (578 MB: 0.36 s here).
	var bornAfter time.Time
	if absent {
		bornAfter = start
	}
	r, ok, _ = c.linkStaged(ctx, dv, ref, bornAfter)
	return r, ok, nil
}

// linkStaged hands out the derived blob ref names as a hard link of the
// Stager's own file, without copying it: when the Stager holds it as a
// read-only (0400) file, dv's options leave its bytes as they are, and it
// hashes to ref's digest now. ok is false otherwise; the caller downloads
// it then (a copy, verified again, and a rotten file is dropped by the
// tier on that read). absent reports that the Stager does not hold the
// blob. With bornAfter not zero, a file created after it (statx birth
// time) is not hashed: the caller verified the stream the Stager wrote it
// from since then.
func (c *Converter) linkStaged(ctx context.Context, dv derivation, ref blob.Ref, bornAfter time.Time) (r *Result, ok, absent bool) {
	st := c.cfg.Stager
	if st == nil {
		return nil, false, false
	}
	f, _, err := st.OpenBlobFile(ctx, ref.Digest)
	if err != nil {
		return nil, false, errors.Is(err, blob.ErrNotFound)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Mode().Perm() != 0o400 || fi.Size() != ref.Size {
		return nil, false, false
	}
	if same, err := growKeeps(f, ref.Size, dv.free); err != nil || !same {
		return nil, false, false
	}
	if bornAfter.IsZero() || !bornSince(f, bornAfter) {
		if d, err := hashFile(ctx, f, ref.Size); err != nil || d != ref.Digest {
			return nil, false, false
		}
	}
	p := filepath.Join(c.tmpDir, "download-"+randomName()+".ext4")
	if err := linkFile(f, p); err != nil {
		return nil, false, false
	}
	r = &Result{Digest: ref.Digest, Size: ref.Size, FromCache: true}
	if err := c.publishPath(dv, p, r, true); err != nil { // OpenBlobFile fsynced it
		os.Remove(p)
		return nil, false, false
	}
	return r, true, false
}

// bornSlack is how far before a download's start a file of the blob may
// look born and still count as written by it (see downloadStaged): more
// than a kernel tick (4 ms at HZ=250, 10 ms at HZ=100). It is safe because
// the Stager did not hold the blob when the download began.
const bornSlack = 50 * time.Millisecond

// bornSince reports whether f's inode was created after t (its birth time,
// where the file system records one; false where it does not).
func bornSince(f *os.File, t time.Time) bool {
	var stx unix.Statx_t
	if err := unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_BTIME, &stx); err != nil || stx.Mask&unix.STATX_BTIME == 0 {
		return false
	}
	return time.Unix(stx.Btime.Sec, int64(stx.Btime.Nsec)).After(t)
}
