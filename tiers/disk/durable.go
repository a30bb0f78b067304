package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/bootid"
	"github.com/strata-oci/strata/internal/ctxio"
)

// Files under the root that say how the tier was last shut down.
const (
	// sessionFile holds the boot id of the process that has the tier open;
	// a clean Close removes it once every blob is durable.
	sessionFile = "SESSION"
	// suspectFile marks a tier that was open when its machine went down:
	// some blob files may be torn, so OpenBlobFile hashes before it hands
	// one out. A completed Verify removes it.
	suspectFile = "SUSPECT"
)

// bootID returns the kernel's boot id, or "" when it cannot be read (then
// every unclean shutdown is taken for a machine crash). Tests replace it.
var bootID = bootid.Read

// fsyncHook, when not nil, is called before every fsync the tier makes
// for durability, with op "file" (a blob file, SESSION, SUSPECT), "dir"
// or "syncfs" (the root's filesystem) and the path; an error it returns
// is taken for the fsync's. Tests only.
var fsyncHook func(op, path string) error

// durable is the state behind Put's deferred durability: the blobs whose
// file or directory entry may not be on disk yet, and whether the tier is
// suspect (see suspectFile).
type durable struct {
	// async: Puts leave their fsyncs to the syncer. Set at Open once the
	// SESSION file is on disk (without it a machine crash could not be
	// told from a clean shutdown, and Puts fsync as they commit).
	async bool

	mu sync.Mutex
	// unsynced maps the hex of every blob committed without fsync to the
	// generation of its latest commit (one counter for all), so a commit
	// made while the syncer works on an older one is not forgotten.
	unsynced map[string]uint64
	gen      uint64
	// newFans: a fan-out directory was made since blobDir was last synced.
	newFans bool
	wake    chan struct{}
	// failed: a blob could not be made durable in this session (it was
	// dropped, but its removal may not be durable either): Close keeps
	// SESSION.
	failed atomic.Bool

	suspect atomic.Bool
	verMu   sync.Mutex
	// verified holds, while suspect, the blobs known good in this
	// process: hashed by OpenBlobFile or written by it.
	verified map[string]struct{}
}

// fsyncFile fsyncs f, whose name is path.
func fsyncFile(f *os.File, path string) error {
	if h := fsyncHook; h != nil {
		if err := h("file", path); err != nil {
			return err
		}
	}
	return f.Sync()
}

// writeSynced writes data to path (replacing it) and makes both the file
// and its directory entry durable.
func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = fsyncFile(f, path)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// removeSynced removes path (if it is there) durably.
func removeSynced(path string) error {
	if err := os.Remove(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	return syncDir(filepath.Dir(path))
}

// startSession runs at the end of Open, before the tier is shared. It
// reads how the last session ended and records this one:
//
//   - no SESSION file: the last Close was clean (or the root is new);
//   - SESSION with this boot's id: the process died but the machine did
//     not; the page cache still holds what it wrote, and one syncfs makes
//     it durable before a later clean Close could vouch for it;
//   - SESSION with another boot id (or none readable): the machine went
//     down with the tier open, so a blob file may be torn: the tier is
//     suspect until a Verify completes (SUSPECT marks it across opens).
//
// Then it writes SESSION with this boot's id. If a marker cannot be
// written the tier stays correct by falling back: Puts fsync as they
// commit, and a stale SESSION is left for the next Open to distrust.
func (t *Tier) startSession() {
	log := t.cfg.Logger
	t.dur.unsynced = make(map[string]uint64)
	t.dur.wake = make(chan struct{}, 1)
	sessPath := filepath.Join(t.root, sessionFile)
	suspPath := filepath.Join(t.root, suspectFile)
	boot := bootID()

	writeSession := true
	old, err := os.ReadFile(sessPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err == nil && boot != "" && strings.TrimSpace(string(old)) == boot:
		// The last process died, the machine did not.
		if err := syncFS(t.root); err != nil {
			log.Warn("disk tier: cannot flush what the last process left; treating it as a machine crash",
				"tier", t.cfg.Name, "root", t.root, "err", err)
			t.becomeSuspect(suspPath, &writeSession)
		}
	default:
		// Another boot (or a SESSION that cannot be read).
		t.becomeSuspect(suspPath, &writeSession)
	}
	if !t.dur.suspect.Load() {
		if _, err := os.Lstat(suspPath); err == nil {
			t.dur.suspect.Store(true) // an earlier crash, not verified since
			log.Info("disk tier: still suspect after a machine crash; OpenBlobFile hashes blobs until Verify completes",
				"tier", t.cfg.Name, "root", t.root)
		}
	}
	if t.dur.suspect.Load() {
		t.dur.verified = make(map[string]struct{})
	}
	if !writeSession {
		return
	}
	if err := writeSynced(sessPath, []byte(boot+"\n")); err != nil {
		log.Warn("disk tier: cannot write the session file; Puts fsync before they return",
			"tier", t.cfg.Name, "root", t.root, "err", err)
		return
	}
	t.dur.async = true
}

// becomeSuspect marks the tier suspect, durably if it can. If the marker
// cannot be written the old SESSION must stay, so the next Open distrusts
// the files again: *writeSession is cleared.
func (t *Tier) becomeSuspect(suspPath string, writeSession *bool) {
	t.dur.suspect.Store(true)
	err := writeSynced(suspPath, nil)
	t.cfg.Logger.Warn("disk tier: the machine went down while the tier was open; blob files may be torn: OpenBlobFile hashes them until Verify completes",
		"tier", t.cfg.Name, "root", t.root, "markerErr", err)
	if err != nil {
		*writeSession = false
	}
}

// syncFS flushes the filesystem that holds root.
func syncFS(root string) error {
	f, err := os.Open(root)
	if err != nil {
		return err
	}
	defer f.Close()
	if h := fsyncHook; h != nil {
		if err := h("syncfs", root); err != nil {
			return err
		}
	}
	return unix.Syncfs(int(f.Fd()))
}

// endSession removes SESSION at a clean Close: every blob is durable.
// With durable false, or if a blob could not be made durable in this
// session, it stays, so the next Open after a machine crash distrusts the
// files.
func (t *Tier) endSession(durable bool) {
	if !t.dur.async {
		return
	}
	if !durable || t.dur.failed.Load() {
		t.cfg.Logger.Warn("disk tier: closed with blobs that could not be made durable; the session file stays",
			"tier", t.cfg.Name, "root", t.root)
		return
	}
	if err := removeSynced(filepath.Join(t.root, sessionFile)); err != nil {
		t.cfg.Logger.Warn("disk tier: remove the session file", "tier", t.cfg.Name, "root", t.root, "err", err)
	}
}

// markUnsynced records that hex's file was just renamed into place
// without fsync, and wakes the syncer. The caller holds hex's stripe and
// calls it after the rename and before the index row is written, so the
// set holds every blob whose row may be visible before it is durable.
func (t *Tier) markUnsynced(hex string) {
	t.dur.mu.Lock()
	t.dur.gen++
	t.dur.unsynced[hex] = t.dur.gen
	t.dur.mu.Unlock()
	select {
	case t.dur.wake <- struct{}{}:
	default:
	}
}

// fanMade records that a fan-out directory was made and blobDir is not
// yet synced.
func (t *Tier) fanMade() {
	t.dur.mu.Lock()
	t.dur.newFans = true
	t.dur.mu.Unlock()
}

// syncer makes committed blobs durable in the background until ctx ends.
func (t *Tier) syncer(ctx context.Context) {
	defer t.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return // Close drains the rest
		case <-t.dur.wake:
		}
		if ctx.Err() != nil {
			return
		}
		t.syncPending(true)
	}
}

// syncPending makes every blob committed so far durable: its file, then
// each distinct fan-out directory (and blobDir when a fan-out directory
// is new). A blob whose file or directory cannot be synced is logged and
// dropped (with rows false, once Close has shut the index, only its file
// goes: the next Open forgets the row). It reports whether all were made
// durable.
func (t *Tier) syncPending(rows bool) bool {
	t.dur.mu.Lock()
	batch := maps.Clone(t.dur.unsynced)
	newFans := t.dur.newFans
	t.dur.newFans = false
	t.dur.mu.Unlock()
	if len(batch) == 0 && !newFans {
		return true
	}
	ok := true
	done := make(map[string]uint64, len(batch)) // synced, gone or dropped
	synced := make(map[string]os.FileInfo, len(batch))
	dirs := make(map[string][]string) // fan-out dir -> hexes synced in it
	for hex, gen := range batch {
		fi, err := t.syncBlobFile(hex)
		switch {
		case err == nil:
			synced[hex] = fi
			dir := filepath.Dir(t.path(hex))
			dirs[dir] = append(dirs[dir], hex)
		case errors.Is(err, fs.ErrNotExist):
			// Deleted or evicted meanwhile: nothing to make durable.
		case fi == nil:
			// Not opened (too many files?): kept for the next pass.
			ok = false
			t.cfg.Logger.Warn("disk tier: cannot open a blob to sync it", "tier", t.cfg.Name, "digest", "sha256:"+hex, "err", err)
			continue
		default:
			ok = false
			t.dropUnsynced(hex, fi, err, rows)
		}
		done[hex] = gen
	}
	if newFans {
		if err := syncDir(t.blobDir); err != nil {
			// A new fan-out directory may not be on disk, and any blob of
			// the batch may be in one. (And later blobs: try again.)
			ok = false
			t.fanMade()
			for hex, fi := range synced {
				t.dropUnsynced(hex, fi, err, rows)
			}
			dirs = nil
		}
	}
	for dir, hexes := range dirs {
		if err := syncDir(dir); err != nil {
			ok = false
			for _, hex := range hexes {
				t.dropUnsynced(hex, synced[hex], err, rows)
			}
		}
	}
	t.dur.mu.Lock()
	for hex, gen := range done {
		if t.dur.unsynced[hex] == gen { // else committed again since
			delete(t.dur.unsynced, hex)
		}
	}
	t.dur.mu.Unlock()
	return ok
}

// syncBlobFile fsyncs the file at hex's path. fi is the file it synced
// (nil if it could not be opened).
func (t *Tier) syncBlobFile(hex string) (fi os.FileInfo, err error) {
	p := t.path(hex)
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return nil, err
	}
	return fi, fsyncFile(f, p)
}

// dropUnsynced drops hex's entry after its file fi could not be made
// durable (unless another file replaced it meanwhile), so that nothing
// that failed to sync stays visible.
func (t *Tier) dropUnsynced(hex string, fi os.FileInfo, err error, rows bool) {
	t.dur.failed.Store(true)
	t.cfg.Logger.Warn("disk tier: cannot make a blob durable; dropped", "tier", t.cfg.Name, "digest", "sha256:"+hex, "err", err)
	same := func() bool {
		pi, err := os.Lstat(t.path(hex))
		return err == nil && os.SameFile(fi, pi)
	}
	if rows {
		t.dropIf(hex, same)
		return
	}
	mu := t.stripe(hex)
	mu.Lock()
	defer mu.Unlock()
	if same() {
		os.Remove(t.path(hex))
	}
}

// syncDirsOf makes hex's directory entry durable: its fan-out directory,
// and blobDir if a fan-out directory was made since it was last synced.
func (t *Tier) syncDirsOf(hex string) error {
	t.dur.mu.Lock()
	newFans := t.dur.newFans
	t.dur.mu.Unlock()
	if newFans {
		if err := syncDir(t.blobDir); err != nil {
			return err
		}
	}
	return syncDir(filepath.Dir(t.path(hex)))
}

// isUnsynced reports whether a commit of hex may not be durable yet.
func (t *Tier) isUnsynced(hex string) bool {
	t.dur.mu.Lock()
	defer t.dur.mu.Unlock()
	_, ok := t.dur.unsynced[hex]
	return ok
}

// trusted reports whether hex's file may be used without hashing it
// first: always, unless the tier is suspect and this process has not
// verified or written it.
func (t *Tier) trusted(hex string) bool {
	if !t.dur.suspect.Load() {
		return true
	}
	t.dur.verMu.Lock()
	defer t.dur.verMu.Unlock()
	_, ok := t.dur.verified[hex]
	return ok
}

// noteVerified records that hex's file is known good in this process.
func (t *Tier) noteVerified(hex string) {
	if !t.dur.suspect.Load() {
		return
	}
	t.dur.verMu.Lock()
	if t.dur.verified != nil {
		t.dur.verified[hex] = struct{}{}
	}
	t.dur.verMu.Unlock()
}

// readyForHandout makes f, the open file of blob d (size bytes) that
// OpenBlobFile is about to hand out, safe to hard-link: durable, and
// hashed first if the tier is suspect. Errors wrap blob.ErrNotFound for
// a file that is not the blob (the entry is dropped) or could not be made
// durable (the entry is dropped), or are the context's or the I/O error.
func (t *Tier) readyForHandout(ctx context.Context, d blob.Digest, hex string, f *os.File, size int64) error {
	if t.dur.async {
		// Always the file itself: the set is kept by name, and f may be
		// a file replaced meanwhile. Cheap when it is already clean.
		err := fsyncFile(f, t.path(hex))
		if err == nil && t.isUnsynced(hex) {
			err = t.syncDirsOf(hex)
		}
		if err != nil {
			fi, serr := f.Stat()
			if serr == nil {
				t.dropUnsynced(hex, fi, err, true)
			} else {
				t.dur.failed.Store(true)
			}
			return fmt.Errorf("disk %q: open %s: %w: cannot make it durable: %v", t.cfg.Name, d, blob.ErrNotFound, err)
		}
	}
	if t.trusted(hex) {
		return nil
	}
	v := blob.NewVerifier(ctxio.NewReader[blob.Digest](ctx, io.NewSectionReader(f, 0, size)), d, size, nil)
	bp := bufPool.Get().(*[]byte)
	_, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{v}, *bp)
	bufPool.Put(bp)
	switch {
	case err == nil:
		t.noteVerified(hex)
		return nil
	case errors.Is(err, blob.ErrMismatch):
		t.dropCorrupt(hex, f, err)
		return fmt.Errorf("disk %q: open %s: %w: %v", t.cfg.Name, d, blob.ErrNotFound, err)
	default:
		return fmt.Errorf("disk %q: open %s: %w", t.cfg.Name, d, err)
	}
}

// verifyPassDone is told by Verify how a pass ended: err is the error
// that stopped it (nil if it completed), clean that every blob it met is
// good or was dropped. A completed clean pass ends suspicion.
func (t *Tier) verifyPassDone(err error, clean bool) {
	if err != nil || !clean || !t.dur.suspect.Load() {
		return
	}
	if rerr := removeSynced(filepath.Join(t.root, suspectFile)); rerr != nil {
		t.cfg.Logger.Warn("disk tier: remove the suspect marker", "tier", t.cfg.Name, "root", t.root, "err", rerr)
		return
	}
	t.dur.suspect.Store(false)
	t.dur.verMu.Lock()
	t.dur.verified = nil
	t.dur.verMu.Unlock()
	t.cfg.Logger.Info("disk tier: verified after a machine crash; no longer suspect", "tier", t.cfg.Name, "root", t.root)
}

// verifyClean reports whether Verify's per-blob result err leaves the
// index clean: the blob is good, or its entry was dropped.
func verifyClean(err error, remove bool) bool {
	return err == nil || errors.Is(err, blob.ErrNotFound) || remove && errors.Is(err, blob.ErrMismatch)
}
