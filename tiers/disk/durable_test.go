package disk

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
)

// fsyncEvent is one call of fsyncHook.
type fsyncEvent struct{ op, path string }

// fsyncLog records the fsyncs the tier makes under one root, in order.
type fsyncLog struct {
	mu     sync.Mutex
	events []fsyncEvent
}

func (l *fsyncLog) add(op, path string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, fsyncEvent{op, path})
	return len(l.events) - 1
}

func (l *fsyncLog) snapshot() []fsyncEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]fsyncEvent(nil), l.events...)
}

// count returns how many fsyncs of op on path were recorded.
func (l *fsyncLog) count(op, path string) int {
	n := 0
	for _, e := range l.snapshot() {
		if e.op == op && e.path == path {
			n++
		}
	}
	return n
}

// dirSyncedAfterFile reports whether dir was fsynced after the last fsync
// of file.
func (l *fsyncLog) dirSyncedAfterFile(file, dir string) bool {
	ev := l.snapshot()
	last := -1
	for i, e := range ev {
		if e.op == "file" && e.path == file {
			last = i
		}
	}
	if last < 0 {
		return false
	}
	for _, e := range ev[last+1:] {
		if e.op == "dir" && e.path == dir {
			return true
		}
	}
	return false
}

// hookFsyncs installs fsyncHook for fsyncs under root: each is recorded,
// then passed to fn (if not nil), whose error becomes the fsync's.
func hookFsyncs(t *testing.T, root string, fn func(op, path string) error) *fsyncLog {
	t.Helper()
	l := &fsyncLog{}
	fsyncHook = func(op, path string) error {
		if path != root && !strings.HasPrefix(path, root+string(filepath.Separator)) {
			return nil
		}
		l.add(op, path)
		if fn != nil {
			return fn(op, path)
		}
		return nil
	}
	t.Cleanup(func() { fsyncHook = nil })
	return l
}

// fakeBoot makes bootID return id for the rest of the test.
func fakeBoot(t *testing.T, id string) {
	t.Helper()
	old := bootID
	bootID = func() string { return id }
	t.Cleanup(func() { bootID = old })
}

// waitClosed fails the test if ch is not closed within a minute: the only
// use of the clock here is to fail instead of hanging when a call blocks
// on an fsync it should not wait for.
func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(time.Minute):
		t.Fatalf("%s: still waiting after a minute", what)
	}
}

// openHoldingFsyncs opens a tier in a new root whose fsyncs of blob and
// temp files (not SESSION) wait until unblock is called (also at
// cleanup, before the tier's Close); entered is closed when the first one
// starts waiting.
func openHoldingFsyncs(t *testing.T) (tr *Tier, log *fsyncLog, entered <-chan struct{}, unblock func()) {
	t.Helper()
	root := t.TempDir()
	in := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	log = hookFsyncs(t, root, func(op, path string) error {
		if op == "file" && !strings.HasSuffix(path, sessionFile) {
			once.Do(func() { close(in) })
			<-release
		}
		return nil
	})
	tr = openTier(t, Config{Root: root})
	var releaseOnce sync.Once
	unblock = func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the Close openTier registered
	return tr, log, in, unblock
}

// TestPutReturnsBeforeFsync holds every fsync of a blob or temp file and
// shows that Put still returns, its blob readable, and that the fsync
// then happens off Put's path, exactly once, before its directory's.
func TestPutReturnsBeforeFsync(t *testing.T) {
	tr, log, entered, unblock := openHoldingFsyncs(t)

	data := randomBytes(1, 300_000)
	d := blob.FromBytes(data)
	var putErr error
	putDone := make(chan struct{})
	go func() {
		defer close(putDone)
		putErr = tr.Put(context.Background(), d, int64(len(data)), bytes.NewReader(data))
	}()
	waitClosed(t, putDone, "Put with its fsync held")
	if putErr != nil {
		t.Fatal(putErr)
	}
	mustRead(t, tr, d, data)
	if !tr.isUnsynced(d.Encoded()) {
		t.Errorf("blob not in the unsynced set after Put returned with its fsync held")
	}
	waitClosed(t, entered, "the syncer's fsync of the blob")

	unblock()
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	p := tr.path(d.Encoded())
	if n := log.count("file", p); n != 1 {
		t.Errorf("blob file fsynced %d times, want 1", n)
	}
	if !log.dirSyncedAfterFile(p, filepath.Dir(p)) {
		t.Errorf("blob directory not fsynced after the blob file: %v", log.snapshot())
	}
}

// TestCloseSyncsEveryPut holds the syncer in its first fsync until Close
// has begun, so every later blob is made durable by Close itself: each
// file exactly once, then its directory, and blobDir for new fan-outs.
func TestCloseSyncsEveryPut(t *testing.T) {
	root := t.TempDir()
	var tr *Tier
	entered := make(chan struct{})
	var once sync.Once
	log := hookFsyncs(t, root, func(op, path string) error {
		if op == "file" && strings.Contains(path, "blobs") {
			first := false
			once.Do(func() { first = true; close(entered) })
			for first && !tr.closing.Load() {
				time.Sleep(time.Millisecond)
			}
		}
		return nil
	})
	tr, err := Open(Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	var ds []blob.Digest
	ds = append(ds, put(t, tr, randomBytes(100, 50_000)))
	waitClosed(t, entered, "the syncer's first fsync")
	for i := range 40 {
		ds = append(ds, put(t, tr, randomBytes(uint64(101+i), 10_000+i)))
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		p := tr.path(d.Encoded())
		if n := log.count("file", p); n != 1 {
			t.Errorf("%s: file fsynced %d times, want 1", d, n)
		}
		if !log.dirSyncedAfterFile(p, filepath.Dir(p)) {
			t.Errorf("%s: directory not fsynced after the file", d)
		}
	}
	if log.count("dir", tr.blobDir) == 0 {
		t.Errorf("blobs/sha256 never fsynced after its fan-out directories were made")
	}
	if _, err := os.Lstat(filepath.Join(root, sessionFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("SESSION after a clean Close: %v, want it removed", err)
	}
}

// TestOpenBlobFileSyncs holds the syncer in its fsync of a blob and shows
// OpenBlobFile fsyncs the file, and its directory, before it returns it.
func TestOpenBlobFileSyncs(t *testing.T) {
	root := t.TempDir()
	entered := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	log := hookFsyncs(t, root, func(op, path string) error {
		if op == "file" && strings.Contains(path, "blobs") {
			first := false
			once.Do(func() { first = true; close(entered) })
			if first {
				<-release
			}
		}
		return nil
	})
	tr := openTier(t, Config{Root: root})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock)

	data := randomBytes(2, 200_000)
	d := put(t, tr, data)
	waitClosed(t, entered, "the syncer's fsync of the blob")
	p := tr.path(d.Encoded())
	f, _, err := tr.OpenBlobFile(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if n := log.count("file", p); n != 2 {
		t.Errorf("blob file fsynced %d times by the time OpenBlobFile returned, want 2 (the held syncer and OpenBlobFile)", n)
	}
	if !log.dirSyncedAfterFile(p, filepath.Dir(p)) {
		t.Errorf("blob directory not fsynced after OpenBlobFile's fsync of the file")
	}
	unblock()
}

// TestSyncFailureDropsBlob makes the fsync of one blob fail: the syncer
// drops it (its row too), the other blobs stay, and Close leaves SESSION
// so the next Open does not take the shutdown for a clean one. Then, with
// the syncer held elsewhere, OpenBlobFile meets the failing fsync itself:
// a miss, and the blob is dropped.
func TestSyncFailureDropsBlob(t *testing.T) {
	root := t.TempDir()
	fakeBoot(t, "boot-A")
	bad, hold, good := randomBytes(3, 70_000), randomBytes(4, 70_000), randomBytes(5, 70_000)
	blobPath := func(data []byte) string {
		hex := blob.FromBytes(data).Encoded()
		return filepath.Join(root, "blobs", "sha256", hex[:2], hex)
	}
	badP, holdP := blobPath(bad), blobPath(hold)
	entered := make(chan struct{})
	release := make(chan struct{})
	var holding atomic.Bool
	hookFsyncs(t, root, func(op, path string) error {
		switch {
		case op == "file" && path == badP:
			return syscall.EIO
		case op == "file" && path == holdP && holding.Load():
			close(entered)
			<-release
		}
		return nil
	})
	tr, err := Open(Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	gd := put(t, tr, good)
	bd := put(t, tr, bad)
	// The syncer drops it before Close begins.
	waitFor(t, "the syncer to drop the blob it cannot sync", func() bool {
		_, err := tr.Stat(context.Background(), bd)
		return errors.Is(err, blob.ErrNotFound)
	})
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	requireExists(t, badP, false)
	requireExists(t, filepath.Join(root, sessionFile), true)

	tr = openTier(t, Config{Root: root})
	requireMiss(t, tr, bd)
	mustRead(t, tr, gd, good)

	holding.Store(true)
	put(t, tr, hold)
	waitClosed(t, entered, "the syncer's fsync of the held blob")
	holding.Store(false)
	defer close(release)
	put(t, tr, bad)
	if _, _, err := tr.OpenBlobFile(context.Background(), bd); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("OpenBlobFile of a blob whose fsync fails = %v, want ErrNotFound", err)
	}
	requireMiss(t, tr, bd)
}

// corruptInPlace overwrites part of hex's file with other bytes (same
// size), as a power loss can leave a file whose data never reached disk.
func corruptInPlace(t *testing.T, root string, d blob.Digest) {
	t.Helper()
	hex := d.Encoded()
	p := filepath.Join(root, "blobs", "sha256", hex[:2], hex)
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, 4096), 1000); err != nil {
		t.Fatal(err)
	}
}

// warnCounter is a slog handler that counts Warn records whose message
// contains substr.
type warnCounter struct {
	substr string
	mu     sync.Mutex
	n      int
}

func (w *warnCounter) Enabled(context.Context, slog.Level) bool { return true }
func (w *warnCounter) Handle(_ context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn && strings.Contains(r.Message, w.substr) {
		w.mu.Lock()
		w.n++
		w.mu.Unlock()
	}
	return nil
}
func (w *warnCounter) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnCounter) WithGroup(string) slog.Handler      { return w }

func (w *warnCounter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

func requireExists(t *testing.T, p string, want bool) {
	t.Helper()
	_, err := os.Lstat(p)
	if got := err == nil; got != want {
		t.Fatalf("%s exists = %v (%v), want %v", filepath.Base(p), got, err, want)
	}
}

// openBlobContent opens d with OpenBlobFile and returns its content.
func openBlobContent(t *testing.T, tr *Tier, d blob.Digest) ([]byte, error) {
	t.Helper()
	f, _, err := tr.OpenBlobFile(context.Background(), d)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// TestSuspectAfterMachineCrash reopens a root whose SESSION comes from
// another boot, with one blob torn: OpenBlobFile refuses the torn one and
// drops it, hands out the intact one, and the suspicion (SUSPECT) lasts
// across opens until a Verify completes with only good blobs left.
func TestSuspectAfterMachineCrash(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	fakeBoot(t, "boot-B")
	tr, err := Open(Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	good, bad, bad2 := randomBytes(10, 150_000), randomBytes(11, 150_000), randomBytes(12, 150_000)
	gd, bd, bd2 := put(t, tr, good), put(t, tr, bad), put(t, tr, bad2)
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	corruptInPlace(t, root, bd)
	corruptInPlace(t, root, bd2)
	// The machine went down (boot-A) with the tier open.
	if err := os.WriteFile(filepath.Join(root, sessionFile), []byte("boot-A\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	warns := &warnCounter{substr: "machine went down"}
	tr, err = Open(Config{Root: root, Logger: slog.New(warns)})
	if err != nil {
		t.Fatal(err)
	}
	if n := warns.count(); n != 1 {
		t.Errorf("%d warnings that the machine went down, want 1", n)
	}
	requireExists(t, filepath.Join(root, suspectFile), true)
	if _, err := openBlobContent(t, tr, bd); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("OpenBlobFile of a torn blob on a suspect tier = %v, want ErrNotFound", err)
	}
	requireMiss(t, tr, bd)
	if got, err := openBlobContent(t, tr, gd); err != nil || string(got) != string(good) {
		t.Fatalf("OpenBlobFile of an intact blob = %d bytes, %v; want its %d bytes", len(got), err, len(good))
	}
	// A Put of a blob it has not verified writes it again.
	put(t, tr, bad2)
	if got, err := openBlobContent(t, tr, bd2); err != nil || string(got) != string(bad2) {
		t.Fatalf("OpenBlobFile after a Put over a torn blob = %d bytes, %v; want its %d bytes", len(got), err, len(bad2))
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}

	// Still suspect after a clean Close and reopen.
	corruptInPlace(t, root, bd2)
	tr, err = Open(Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	requireExists(t, filepath.Join(root, suspectFile), true)
	if _, err := openBlobContent(t, tr, bd2); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("OpenBlobFile of a torn blob after a reopen = %v, want ErrNotFound", err)
	}

	// A Verify that finds rot it does not remove, or that is cancelled,
	// does not end the suspicion; a completed one does.
	put(t, tr, bad2)
	corruptInPlace(t, root, bd2)
	if err := tr.Verify(ctx, false, nil); err != nil {
		t.Fatal(err)
	}
	requireExists(t, filepath.Join(root, suspectFile), true)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := tr.Verify(cctx, true, nil); err == nil {
		t.Fatal("Verify with a cancelled context succeeded")
	}
	requireExists(t, filepath.Join(root, suspectFile), true)
	if err := tr.Verify(ctx, true, nil); err != nil {
		t.Fatal(err)
	}
	requireExists(t, filepath.Join(root, suspectFile), false)
	requireMiss(t, tr, bd2)
	if tr.dur.suspect.Load() {
		t.Errorf("tier still suspect after a completed Verify")
	}
}

// TestSessionOnOpen: what a SESSION left by an earlier open says about the
// shutdown. Only another boot (or an unknown one) makes the tier suspect;
// the same boot (the process died) flushes the filesystem instead.
func TestSessionOnOpen(t *testing.T) {
	for _, tc := range []struct {
		desc        string
		session     *string // SESSION content left behind; nil: none
		boot        string
		wantSuspect bool
		wantSyncfs  bool
	}{
		{desc: "clean close: no SESSION", boot: "boot-A"},
		{desc: "process crash: SESSION of this boot", session: ptr("boot-A\n"), boot: "boot-A", wantSyncfs: true},
		{desc: "machine crash: SESSION of another boot", session: ptr("boot-Z\n"), boot: "boot-A", wantSuspect: true},
		{desc: "boot id unreadable: any SESSION is suspect", session: ptr("\n"), boot: "", wantSuspect: true},
		{desc: "torn SESSION", session: ptr(""), boot: "boot-A", wantSuspect: true},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			root := t.TempDir()
			fakeBoot(t, tc.boot)
			tr, err := Open(Config{Root: root})
			if err != nil {
				t.Fatal(err)
			}
			data := randomBytes(20, 100_000)
			d := put(t, tr, data)
			if err := tr.Close(); err != nil {
				t.Fatal(err)
			}
			// Damage OpenBlobFile would notice only by hashing.
			corruptInPlace(t, root, d)
			if tc.session != nil {
				if err := os.WriteFile(filepath.Join(root, sessionFile), []byte(*tc.session), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			log := hookFsyncs(t, root, nil)
			tr = openTier(t, Config{Root: root})
			requireExists(t, filepath.Join(root, suspectFile), tc.wantSuspect)
			if got := log.count("syncfs", root) > 0; got != tc.wantSyncfs {
				t.Errorf("syncfs at Open = %v, want %v", got, tc.wantSyncfs)
			}
			requireExists(t, filepath.Join(root, sessionFile), true)
			_, err = openBlobContent(t, tr, d)
			if tc.wantSuspect {
				if !errors.Is(err, blob.ErrNotFound) {
					t.Errorf("OpenBlobFile on a suspect tier = %v, want ErrNotFound", err)
				}
			} else if err != nil {
				t.Errorf("OpenBlobFile on a trusted tier = %v, want the file as it is (no hashing)", err)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestCloseSyncsPutsThatRaceIt holds Close in its first drain and commits
// another Put meanwhile: Close makes that one durable too before it closes
// the index.
func TestCloseSyncsPutsThatRaceIt(t *testing.T) {
	root := t.TempDir()
	var tr *Tier
	first, held, late := randomBytes(30, 40_000), randomBytes(31, 40_000), randomBytes(32, 40_000)
	blobPath := func(data []byte) string {
		hex := blob.FromBytes(data).Encoded()
		return filepath.Join(root, "blobs", "sha256", hex[:2], hex)
	}
	firstP, heldP := blobPath(first), blobPath(held)
	syncerHeld := make(chan struct{})
	closeHeld := make(chan struct{})
	release := make(chan struct{})
	log := hookFsyncs(t, root, func(op, path string) error {
		switch {
		case op != "file":
		case path == firstP: // the syncer, until Close begins
			close(syncerHeld)
			for !tr.closing.Load() {
				time.Sleep(time.Millisecond)
			}
		case path == heldP: // Close's first drain
			close(closeHeld)
			<-release
		}
		return nil
	})
	tr, err := Open(Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	put(t, tr, first)
	waitClosed(t, syncerHeld, "the syncer's fsync of the first blob")
	put(t, tr, held)
	closed := make(chan struct{})
	var closeErr error
	go func() {
		defer close(closed)
		closeErr = tr.Close()
	}()
	waitClosed(t, closeHeld, "Close's fsync of the second blob")
	d := put(t, tr, late)
	close(release)
	waitClosed(t, closed, "Close")
	if closeErr != nil {
		t.Fatal(closeErr)
	}
	p := tr.path(d.Encoded())
	if n := log.count("file", p); n != 1 {
		t.Errorf("blob put during Close: file fsynced %d times, want 1", n)
	}
	if !log.dirSyncedAfterFile(p, filepath.Dir(p)) {
		t.Errorf("blob put during Close: directory not fsynced after the file")
	}
}

// TestCommitStagedReturnsBeforeFsync holds every fsync of a blob or
// staging file: CommitStaged still returns, its blob readable and in the
// unsynced set, and the syncer fsyncs the file once after the commit,
// then its directory. (A 578 MB derived image waited up to half a second
// for its fsync at commit.)
func TestCommitStagedReturnsBeforeFsync(t *testing.T) {
	tr, log, entered, unblock := openHoldingFsyncs(t)

	f, want := stageContent(t, tr, randomBytes(3, 300<<10), 4<<20)
	stagedPath := f.Name()
	var info blob.Info
	var commitErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		info, commitErr = tr.CommitStaged(context.Background(), f)
	}()
	waitClosed(t, done, "CommitStaged with every fsync held")
	if commitErr != nil {
		t.Fatal(commitErr)
	}
	defer tr.DiscardStaged(f)
	mustRead(t, tr, info.Digest, want)
	if !tr.isUnsynced(info.Digest.Encoded()) {
		t.Errorf("committed blob not in the unsynced set")
	}
	if n := log.count("file", stagedPath); n != 0 {
		t.Errorf("staging file fsynced %d times on the commit's path, want 0", n)
	}
	waitClosed(t, entered, "the syncer's fsync of the committed blob")
	unblock()
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	p := tr.path(info.Digest.Encoded())
	if n := log.count("file", p); n != 1 {
		t.Errorf("committed blob fsynced %d times, want 1", n)
	}
	if !log.dirSyncedAfterFile(p, filepath.Dir(p)) {
		t.Errorf("blob directory not fsynced after the blob file: %v", log.snapshot())
	}
}
