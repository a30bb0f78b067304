package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/ctxio"
	"github.com/strata-oci/strata/internal/privdir"
)

// Tier is a blob.Tier on a local directory. It is safe for concurrent use.
// Reads take no lock shared with other blobs: a read of one blob never waits
// for a Put, Delete or eviction of another. Close releases the root.
type Tier struct {
	cfg     Config
	root    string
	blobDir string // root/blobs/sha256
	tmpDir  string
	db      *badger.DB
	lock    *rootLock
	// mode is modeDisk, modeReadOnly or modeMemory (see openindex.go);
	// it changes (read-only to disk) only under life's write lock.
	mode     atomic.Int32
	upMu     sync.Mutex // one reopen of a read-only index at a time
	rebuilds atomic.Int64
	created  bool // Open made a new index (none, or a damaged one, was there)

	// While the index cannot be written, deleted rows and refs are hidden
	// here (hex, encoded ref key) and deleted when it can be again.
	hideMu     sync.Mutex
	hiddenRows map[string]struct{}
	hiddenRefs map[string]struct{}

	// stripes serialize mutations (commit, delete, evict, drop) of one
	// digest's file and row; reads never take them.
	stripes [256]sync.Mutex
	fanOK   [256]atomic.Bool // fan-out directory known to exist
	// flushMu orders access flushes against row deletions, so a flush
	// never resurrects the row of a blob deleted meanwhile.
	flushMu sync.Mutex
	// pending holds last-access updates not yet written to the index;
	// flushing those a flush is writing right now (both stay visible to
	// lookups until the index has them).
	pendMu   sync.Mutex
	pending  map[string]row
	flushing map[string]row

	// Staging files handed out by Stage and not yet discarded.
	stageMu sync.Mutex
	staged  map[*os.File]*staging

	// dur tracks blobs Put has not made durable yet, for the syncer, and
	// whether the tier is suspect after a machine crash (see durable.go).
	dur durable

	blobs, bytes atomic.Int64
	recon        ReconcileStats
	forgotten    []string // hex of the rows reconcile forgot (see Forgotten)

	// life guards the index against use after Close: index operations
	// hold it for reading, Close for writing.
	life    sync.RWMutex
	closed  bool
	closing atomic.Bool

	evictMu sync.Mutex // one eviction pass at a time
	evictCh chan struct{}
	flushCh chan struct{}
	stop    context.CancelFunc
	wg      sync.WaitGroup
}

var _ blob.Tier = (*Tier)(nil)

// Open opens or creates the tier at cfg.Root, makes it private (mode 0700;
// a root owned by another user is refused with an error wrapping
// fs.ErrPermission), locks it (see ErrLocked),
// reconciles the index with the files (see ReconcileStats), records the
// session (see the package doc, Guarantees) and starts the background
// flusher, evictor and syncer.
//
// A damaged index (one Badger refuses or panics on) is moved aside to
// root/index.damaged-<time> and rebuilt from the blob files; its refs are
// lost (see IndexRebuilds). On a filesystem with less than a few MiB free
// the index is opened read-only and the tier still reads, evicts, deletes
// and verifies (see IndexReadOnly). Open never panics on what it reads.
func Open(cfg Config) (*Tier, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("disk: root %q: %w", cfg.Root, err)
	}
	if err := privateRoot(root); err != nil {
		return nil, err
	}
	lk, err := lockRoot(root)
	if err != nil {
		return nil, err
	}
	t := &Tier{
		cfg:     cfg,
		root:    root,
		blobDir: filepath.Join(root, "blobs", "sha256"),
		tmpDir:  filepath.Join(root, "tmp"),
		lock:    lk,
		pending: make(map[string]row),
		evictCh: make(chan struct{}, 1),
		flushCh: make(chan struct{}, 1),

		hiddenRows: make(map[string]struct{}),
		hiddenRefs: make(map[string]struct{}),
	}
	fail := func(err error) (*Tier, error) {
		if t.db != nil {
			t.db.Close()
		}
		lk.unlock()
		return nil, err
	}
	if err := t.makeDirs(); err != nil {
		return fail(err)
	}
	if err := t.loadIndex(); err != nil {
		return fail(err)
	}
	if t.recon, err = t.reconcile(); err != nil {
		return fail(fmt.Errorf("disk: reconcile %s: %w", root, err))
	}
	if t.created && t.recon.OrphansAdopted > 0 && t.rebuilds.Load() == 0 {
		// The index was missing (deleted by hand?) and blob files were
		// there: rebuilt from them like a damaged one, refs lost.
		t.rebuilds.Add(1)
		cfg.Logger.Warn("disk tier: index missing; rebuilt from the blob files", "tier", cfg.Name, "root", root,
			"blobs", t.recon.OrphansAdopted)
	}
	if t.recon != (ReconcileStats{}) {
		cfg.Logger.Info("disk tier reconciled", "root", root, "tier", cfg.Name,
			"tempRemoved", t.recon.TempRemoved, "rowsForgotten", t.recon.RowsForgotten,
			"orphansAdopted", t.recon.OrphansAdopted, "orphansRemoved", t.recon.OrphansRemoved)
	}
	t.startSession()
	ctx, stop := context.WithCancel(context.Background())
	t.stop = stop
	t.wg.Add(3)
	go t.flusher(ctx)
	go t.evictor(ctx)
	go t.syncer(ctx)
	t.maybeEvict()
	return t, nil
}

// privateRoot makes the root private to this user (privdir.Ensure): a
// root another user owns is refused with an error wrapping
// fs.ErrPermission.
func privateRoot(root string) error {
	if err := privdir.Ensure(root, true, true); err != nil {
		return fmt.Errorf("disk: root: %w", err)
	}
	return nil
}

// makeDirs creates the layout. The 256 fan-out directories are made on
// first use (see fanOut): creating them all up front costs a good part of a
// second on a busy disk.
func (t *Tier) makeDirs() error {
	for _, d := range []string{t.blobDir, t.tmpDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("disk: create %s: %w", d, err)
		}
	}
	return nil
}

// fanOut makes sure the fan-out directory of hex exists: durably, or
// with durable false, recorded for the syncer to make durable. The
// caller holds hex's stripe, which covers exactly that directory.
func (t *Tier) fanOut(hex string, durable bool) error {
	i := stripeIndex(hex)
	if t.fanOK[i].Load() {
		return nil
	}
	err := os.Mkdir(filepath.Join(t.blobDir, hex[:2]), 0o700)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err == nil {
		if !durable {
			t.fanMade()
		} else if err := syncDir(t.blobDir); err != nil {
			return err
		}
	}
	t.fanOK[i].Store(true)
	return nil
}

// Name implements blob.Tier.
func (t *Tier) Name() string { return t.cfg.Name }

// Root returns the tier's root directory (absolute).
func (t *Tier) Root() string { return t.root }

// Reconciled reports what Open repaired in the index and files.
func (t *Tier) Reconciled() ReconcileStats { return t.recon }

// Close flushes buffered access times, stops background work, makes every
// blob durable (fsyncs what Puts left to the syncer), closes the index and
// releases the root lock. Readers already handed out keep working (their
// files stay open) but no longer refresh access times. Calls after Close
// fail with an error wrapping blob.ErrUnavailable.
func (t *Tier) Close() error {
	if !t.closing.CompareAndSwap(false, true) {
		return t.errClosed()
	}
	t.stop()
	t.wg.Wait()
	// What the syncer had not reached; a blob that fails to sync is
	// dropped, row and all.
	durable := t.syncPending(true)
	t.evictMu.Lock() // an EvictTo called by a user finishes first
	defer t.evictMu.Unlock()
	if rows, refs := t.hiddenCounts(); rows+refs > 0 {
		// Write the deletions made while the filesystem was full, if it
		// has room now (eviction may have made it).
		if err := t.indexWritable(); err != nil && refs > 0 {
			t.cfg.Logger.Warn("disk tier: filesystem still full; ref deletions are not kept (deleted blob rows are forgotten on the next open)",
				"tier", t.cfg.Name, "root", t.root, "refs", refs, "rows", rows)
		}
	}
	ferr := t.flush()
	t.life.Lock()
	t.closed = true
	t.life.Unlock()
	// No row can be written from here on: sync the commits of Puts that
	// raced with Close (their rows were written before closed was set).
	// No lock is held: a commit holding its stripe fails fast now.
	if !t.syncPending(false) {
		durable = false
	}
	t.life.Lock()
	err := t.db.Close()
	t.life.Unlock()
	t.endSession(durable && err == nil)
	if lerr := t.lock.unlock(); err == nil {
		err = lerr
	}
	if err == nil && ferr != nil {
		err = ferr
	}
	if err != nil {
		return fmt.Errorf("disk %q: close: %w", t.cfg.Name, err)
	}
	return nil
}

func (t *Tier) errClosed() error {
	return fmt.Errorf("%w: disk tier %q is closed", blob.ErrUnavailable, t.cfg.Name)
}

// withDB runs fn while the index is guaranteed open.
func (t *Tier) withDB(fn func(db *badger.DB) error) error {
	t.life.RLock()
	defer t.life.RUnlock()
	if t.closed {
		return t.errClosed()
	}
	return fn(t.db)
}

func (t *Tier) view(fn func(txn *badger.Txn) error) error {
	return t.withDB(func(db *badger.DB) error { return db.View(fn) })
}

func (t *Tier) update(fn func(txn *badger.Txn) error) error {
	// Badger refuses a transaction whose reads another commit overtook
	// (ErrConflict); fn is re-run from scratch, so retrying is safe.
	var err error
	for range 16 {
		err = t.withDB(func(db *badger.DB) error { return db.Update(fn) })
		if !errors.Is(err, badger.ErrConflict) {
			return err
		}
	}
	return err
}

// check validates d and returns its hex part.
func (t *Tier) check(d blob.Digest) (string, error) {
	if err := blob.ValidateDigest(d); err != nil {
		return "", fmt.Errorf("disk %q: %w", t.cfg.Name, err)
	}
	return d.Encoded(), nil
}

func (t *Tier) path(hex string) string { return filepath.Join(t.blobDir, hex[:2], hex) }

// stripe returns the lock for mutations of hex: one per fan-out directory.
func (t *Tier) stripe(hex string) *sync.Mutex { return &t.stripes[stripeIndex(hex)] }

func stripeIndex(hex string) int { return fromHex(hex[0])<<4 | fromHex(hex[1]) }

func fromHex(c byte) int {
	if c <= '9' {
		return int(c - '0')
	}
	return int(c-'a') + 10
}

func (t *Tier) notFound(d blob.Digest) error {
	return fmt.Errorf("disk %q: %s: %w", t.cfg.Name, d, blob.ErrNotFound)
}

// lookup returns d's row with any buffered access time applied.
func (t *Tier) lookup(hex string) (r row, found bool, err error) {
	err = t.view(func(txn *badger.Txn) error {
		r, found, err = getRow(txn, hex)
		return err
	})
	if err != nil || !found {
		return r, found, err
	}
	if t.rowHidden(hex) { // deleted while the index could not be written
		return row{}, false, nil
	}
	t.pendMu.Lock()
	r.atime = t.newestLocked(hex, r.atime)
	t.pendMu.Unlock()
	return r, true, nil
}

func (t *Tier) info(d blob.Digest, r row) blob.Info {
	return blob.Info{Digest: d, Size: r.size, LastAccess: unixNano(r.atime), Tier: t.cfg.Name}
}

// Stat implements blob.CAS from the index alone; it does not count as an
// access for eviction.
func (t *Tier) Stat(ctx context.Context, d blob.Digest) (blob.Info, error) {
	hex, err := t.check(d)
	if err != nil {
		return blob.Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return blob.Info{}, fmt.Errorf("disk %q: stat %s: %w", t.cfg.Name, d, err)
	}
	r, found, err := t.lookup(hex)
	if err != nil {
		return blob.Info{}, fmt.Errorf("disk %q: stat %s: %w", t.cfg.Name, d, err)
	}
	if !found {
		return blob.Info{}, t.notFound(d)
	}
	return t.info(d, r), nil
}

// Open implements blob.CAS. The reader verifies the file as it streams and
// fails at EOF with an error wrapping blob.ErrMismatch if the file rotted;
// the tier then drops the entry. Cancelling ctx fails later Reads. The
// reader must be closed; it is not safe for concurrent Reads.
func (t *Tier) Open(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	f, _, r, err := t.openFile(ctx, d)
	if err != nil {
		return nil, blob.Info{}, err
	}
	return newReader(ctx, t, d, f, r.size), t.info(d, r), nil
}

// openFile opens d's file for Open and OpenBlobFile and counts the access.
// A file gone behind the tier's back drops its row; errors wrap
// blob.ErrNotFound for a blob the tier does not hold.
func (t *Tier) openFile(ctx context.Context, d blob.Digest) (*os.File, string, row, error) {
	hex, err := t.check(d)
	if err != nil {
		return nil, "", row{}, err
	}
	if err := ctx.Err(); err != nil {
		return nil, "", row{}, fmt.Errorf("disk %q: open %s: %w", t.cfg.Name, d, err)
	}
	r, found, err := t.lookup(hex)
	if err != nil {
		return nil, "", row{}, fmt.Errorf("disk %q: open %s: %w", t.cfg.Name, d, err)
	}
	if !found {
		return nil, "", row{}, t.notFound(d)
	}
	f, err := os.Open(t.path(hex))
	if errors.Is(err, fs.ErrNotExist) {
		// The file went missing behind our back: forget the row.
		t.dropIf(hex, func() bool {
			_, err := os.Lstat(t.path(hex))
			return errors.Is(err, fs.ErrNotExist)
		})
		return nil, "", row{}, t.notFound(d)
	}
	if err != nil {
		return nil, "", row{}, fmt.Errorf("disk %q: open %s: %w", t.cfg.Name, d, err)
	}
	r.atime = t.now()
	t.touch(hex, r)
	return f, hex, r, nil
}

// dropIf removes hex's file and row if cond (evaluated under the digest's
// lock) holds.
func (t *Tier) dropIf(hex string, cond func() bool) {
	mu := t.stripe(hex)
	mu.Lock()
	defer mu.Unlock()
	if cond() {
		if _, _, err := t.removeLocked(hex); err != nil {
			t.cfg.Logger.Warn("disk tier: drop entry", "tier", t.cfg.Name, "digest", "sha256:"+hex, "err", err)
		}
	}
}

// dropCorrupt is called by a reader that found f's content wrong. It drops
// the entry unless the file at the path is no longer f (a good copy was
// stored meanwhile).
func (t *Tier) dropCorrupt(hex string, f *os.File, err error) {
	t.cfg.Logger.Warn("disk tier: corrupt blob dropped", "tier", t.cfg.Name, "digest", "sha256:"+hex, "err", err)
	t.dropIf(hex, func() bool {
		fi, err1 := f.Stat()
		pi, err2 := os.Lstat(t.path(hex))
		return err1 == nil && err2 == nil && os.SameFile(fi, pi)
	})
}

// removeLocked deletes hex's file and row; the caller holds its stripe.
// existed reports whether either was there; size is the row's size.
func (t *Tier) removeLocked(hex string) (existed bool, size int64, err error) {
	t.flushMu.Lock()
	defer t.flushMu.Unlock()
	if t.indexWritable() != nil {
		return t.removeFileFirstLocked(hex)
	}
	// The row goes first: if that fails, the file stays and so does the
	// row (consistent); if the file removal then fails, the file is an
	// orphan without a row, invisible, and reconciled on the next Open.
	rowExisted := false
	err = t.update(func(txn *badger.Txn) error {
		rowExisted = false
		r, found, err := getRow(txn, hex)
		if err != nil || !found {
			return err
		}
		rowExisted, size = true, r.size
		return txn.Delete(blobKey(hex))
	})
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, badger.ErrReadOnlyTxn) {
		return t.removeFileFirstLocked(hex)
	}
	if err != nil {
		return false, 0, err
	}
	if rowExisted && t.rowHidden(hex) {
		t.unhideRow(hex) // counted when it was hidden
		rowExisted = false
	}
	if rowExisted {
		t.blobs.Add(-1)
		t.bytes.Add(-size)
	}
	ferr := os.Remove(t.path(hex))
	fileExisted := ferr == nil
	if errors.Is(ferr, fs.ErrNotExist) {
		ferr = nil
	}
	t.pendMu.Lock()
	delete(t.pending, hex)
	t.pendMu.Unlock()
	return fileExisted || rowExisted, size, ferr
}

// removeFileFirstLocked is removeLocked when the index cannot be written
// (the filesystem is full): the file goes first, freeing its space, and
// the row is hidden, to be deleted once the index can be written or
// forgotten by the next Open (its file is gone). The caller holds hex's
// stripe and flushMu.
func (t *Tier) removeFileFirstLocked(hex string) (existed bool, size int64, err error) {
	r, rowFound, err := t.lookup(hex)
	if err != nil {
		return false, 0, err
	}
	ferr := os.Remove(t.path(hex))
	if ferr != nil && !errors.Is(ferr, fs.ErrNotExist) {
		return false, 0, ferr // the file stays, and so does its row
	}
	if rowFound {
		t.hideRow(hex)
		t.blobs.Add(-1)
		t.bytes.Add(-r.size)
	}
	t.pendMu.Lock()
	delete(t.pending, hex)
	t.pendMu.Unlock()
	return ferr == nil || rowFound, r.size, nil
}

// Put implements blob.CAS: temp file, hash while writing (leaving holes for
// zero blocks), verify, rename, index row. The blob is visible, all or
// nothing, when Put returns; it is durable once the background syncer has
// fsynced its file and directory, and at the latest when Close returns
// (see the package doc, Guarantees). A blob already present is not read
// again (after a machine crash, until it is verified, it is). On any
// failure nothing is visible and the temp file is gone.
// Errors wrap blob.ErrMismatch, blob.ErrTooLarge, the context's error, or
// the I/O error (ENOSPC stays testable with errors.Is).
func (t *Tier) Put(ctx context.Context, d blob.Digest, size int64, r io.Reader) error {
	hex, err := t.check(d)
	if err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("disk %q: put %s: %w: negative size %d", t.cfg.Name, d, blob.ErrInvalidDigest, size)
	}
	if t.cfg.MaxBlob > 0 && size > t.cfg.MaxBlob {
		return fmt.Errorf("disk %q: put %s: %w: %d bytes exceeds %d", t.cfg.Name, d, blob.ErrTooLarge, size, t.cfg.MaxBlob)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("disk %q: put %s: %w", t.cfg.Name, d, err)
	}
	// A blob already held is not stored again, unless a machine crash may
	// have torn its file (see trusted).
	if cur, found, err := t.lookup(hex); err != nil {
		return fmt.Errorf("disk %q: put %s: %w", t.cfg.Name, d, err)
	} else if found && cur.size == size && t.trusted(hex) {
		if fi, err := os.Lstat(t.path(hex)); err == nil && fi.Mode().IsRegular() && fi.Size() == size {
			t.touch(hex, row{size: size, atime: t.now()})
			return nil
		}
		// The row outlived its file: store it again.
	}
	// The index keeps a reserve (see IndexReserve): without it no blob
	// is written.
	if err := t.checkRoom(); err != nil {
		return fmt.Errorf("disk %q: put %s: %w", t.cfg.Name, d, err)
	}
	if err := t.writeAndCommit(ctx, d, hex, size, r); err != nil {
		return fmt.Errorf("disk %q: put %s: %w", t.cfg.Name, d, err)
	}
	t.maybeEvict()
	return nil
}

// writeAndCommit writes, verifies and commits one Put. It does not fsync:
// the commit hands the blob to the syncer (unless the session could not
// be recorded at Open, see startSession: then it fsyncs as it commits).
func (t *Tier) writeAndCommit(ctx context.Context, d blob.Digest, hex string, size int64, r io.Reader) (err error) {
	f, err := os.CreateTemp(t.tmpDir, hex[:16]+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			os.Remove(tmp)
		}
	}()
	w := &sparseWriter{f: f}
	if _, err := blob.Copy(w, ctxio.NewReader[blob.Digest](ctx, r), d, size); err != nil {
		return err
	}
	if err := w.finish(); err != nil {
		return err
	}
	durable := !t.dur.async
	if durable {
		if err := fsyncFile(f, tmp); err != nil {
			return err
		}
	}
	cerr := f.Close()
	f = nil
	if cerr != nil {
		return cerr
	}
	return t.commit(hex, tmp, size, durable)
}

// commit moves a verified temp file into place and records its row. With
// durable the file is fsynced already and the directory is fsynced here;
// without, neither is yet: the blob goes to the syncer.
func (t *Tier) commit(hex, tmp string, size int64, durable bool) error {
	mu := t.stripe(hex)
	mu.Lock()
	defer mu.Unlock()
	var cur row
	var found bool
	err := t.view(func(txn *badger.Txn) (err error) {
		cur, found, err = getRow(txn, hex)
		return err
	})
	if err != nil {
		return err
	}
	final := t.path(hex)
	hidden := t.rowHidden(hex) // deleted while the index could not be written
	if found && !hidden && cur.size == size && t.trusted(hex) {
		if fi, err := os.Lstat(final); err == nil && fi.Mode().IsRegular() && fi.Size() == size {
			// A concurrent Put won; ours is a duplicate.
			os.Remove(tmp)
			t.touch(hex, row{size: size, atime: t.now()})
			return nil
		}
	}
	// After this blob, is there still room for the index? (The temp file
	// is removed on error.)
	if err := t.indexWritable(); err != nil {
		return err
	}
	if err := t.fanOut(hex, durable); err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	if durable {
		if err := t.syncDirsOf(hex); err != nil {
			return err
		}
	} else {
		// Before the row: Close syncs every blob whose row it lets in.
		t.markUnsynced(hex)
	}
	t.noteVerified(hex) // written by this process
	nr := row{size: size, atime: t.now()}
	err = t.update(func(txn *badger.Txn) error {
		var err error
		cur, found, err = getRow(txn, hex)
		if err != nil {
			return err
		}
		return txn.Set(blobKey(hex), encodeRow(nr))
	})
	if err != nil {
		// The file is in place without a row: invisible, and adopted or
		// overwritten later.
		return err
	}
	if hidden { // its row was discounted when it was hidden
		t.unhideRow(hex)
		found = false
	}
	if found {
		t.bytes.Add(size - cur.size)
	} else {
		t.blobs.Add(1)
		t.bytes.Add(size)
	}
	return nil
}

// Delete implements blob.CAS.
func (t *Tier) Delete(ctx context.Context, d blob.Digest) error {
	hex, err := t.check(d)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("disk %q: delete %s: %w", t.cfg.Name, d, err)
	}
	mu := t.stripe(hex)
	mu.Lock()
	existed, _, err := t.removeLocked(hex)
	mu.Unlock()
	if err != nil {
		return fmt.Errorf("disk %q: delete %s: %w", t.cfg.Name, d, err)
	}
	if !existed {
		return t.notFound(d)
	}
	return nil
}

// Walk implements blob.CAS. It lists the index in batches and calls fn
// outside any index transaction, so fn may call other methods of t.
func (t *Tier) Walk(ctx context.Context, fn func(blob.Info) error) error {
	return t.scanRows(ctx, func(hex string, r row) error {
		return fn(t.info(blob.Digest("sha256:"+hex), r))
	})
}

// scanRows calls fn for every blob row, with buffered access times applied,
// in batches so no transaction is held while fn runs.
func (t *Tier) scanRows(ctx context.Context, fn func(hex string, r row) error) error {
	type kv struct {
		hex string
		r   row
	}
	const batch = 512
	seek := []byte(blobPrefix)
	prefix := []byte(blobPrefix)
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("disk %q: walk: %w", t.cfg.Name, err)
		}
		var got []kv
		err := t.view(func(txn *badger.Txn) error {
			opts := badger.DefaultIteratorOptions
			opts.Prefix = prefix
			opts.PrefetchSize = batch
			it := txn.NewIterator(opts)
			defer it.Close()
			for it.Seek(seek); it.ValidForPrefix(prefix) && len(got) < batch; it.Next() {
				item := it.Item()
				key := item.Key()
				if len(seek) > len(prefix) && string(key) == string(seek) {
					continue // the last key of the previous batch
				}
				var r row
				if err := item.Value(func(v []byte) (err error) { r, err = decodeRow(v); return err }); err != nil {
					return fmt.Errorf("%s: %w", key, err)
				}
				got = append(got, kv{string(key[len(prefix):]), r})
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("disk %q: walk: %w", t.cfg.Name, err)
		}
		if len(got) == 0 {
			return nil
		}
		t.pendMu.Lock()
		for i := range got {
			got[i].r.atime = t.newestLocked(got[i].hex, got[i].r.atime)
		}
		t.pendMu.Unlock()
		for _, e := range got {
			if t.rowHidden(e.hex) {
				continue
			}
			if err := fn(e.hex, e.r); err != nil {
				return err
			}
		}
		seek = blobKey(got[len(got)-1].hex)
	}
}

// Usage implements blob.Tier. Bytes counts logical blob sizes (a sparse
// file counts its full size).
func (t *Tier) Usage(ctx context.Context) (blob.Usage, error) {
	n, err := t.countRefs(ctx)
	if err != nil {
		return blob.Usage{}, err
	}
	return blob.Usage{Blobs: t.blobs.Load(), Bytes: t.bytes.Load(), Refs: n, Budget: t.cfg.Budget}, nil
}

// syncDir fsyncs a directory so a rename or create in it is durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	if h := fsyncHook; h != nil {
		err = h("dir", dir)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, syscall.EINVAL) { // filesystems that cannot sync directories
		err = nil
	}
	return err
}
