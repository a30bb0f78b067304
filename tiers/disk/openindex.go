package disk

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/ristretto/v2/z"

	"github.com/strata-oci/strata/blob"
)

// Index modes. The index is normally on disk and written to; on a full
// filesystem it is opened read-only (see Tier.indexWritable); when it had
// to be rebuilt on a full filesystem it lives in memory until the next Open.
const (
	modeDisk int32 = iota
	modeReadOnly
	modeMemory
)

// IndexReserve is the free space (bytes) the disk tier keeps on its
// filesystem for its index: Badger writes through memory-mapped files, and
// a write into a mapped page the filesystem cannot back kills the process
// (SIGBUS) instead of returning ENOSPC. Put stores no blob that would leave
// less, and below it the index is not written (see Tier.IndexReadOnly).
const IndexReserve = 4 << 20

// keepDamaged is how many moved-aside damaged indexes are kept.
const keepDamaged = 2

// errNoSpace is returned (wrapped) by writes refused because the
// filesystem is (nearly) full; errors.Is(err, syscall.ENOSPC) holds.
var errNoSpace = fmt.Errorf("%w (less than %d MiB free, kept for the index)", syscall.ENOSPC, IndexReserve>>20)

// indexDamage marks an index that cannot be opened because of what its
// files hold, as opposed to the environment (permissions, a full disk, too
// many open files): only a damaged index is moved aside and rebuilt.
type indexDamage struct{ err error }

func (e *indexDamage) Error() string { return "index damaged: " + e.err.Error() }
func (e *indexDamage) Unwrap() error { return e.err }

// environmental lists the errors that say nothing about the index's
// content: the index is left alone and Open fails.
var environmental = []syscall.Errno{
	syscall.ENOSPC, syscall.EDQUOT, syscall.EACCES, syscall.EPERM, syscall.EROFS,
	syscall.EMFILE, syscall.ENFILE, syscall.ENOMEM, syscall.EIO, syscall.EAGAIN,
	syscall.EINTR, syscall.EBUSY,
}

// classify wraps err in *indexDamage unless an environmental error caused it.
func classify(err error) error {
	if err == nil {
		return nil
	}
	for _, e := range environmental {
		if errors.Is(err, e) {
			return err
		}
	}
	var d *indexDamage
	if errors.As(err, &d) {
		return err
	}
	return &indexDamage{err}
}

// faultError is a memory fault (SIGBUS) in a mapped index file turned into
// an error: a full tmpfs cannot back a page, or the medium failed. It is
// environmental.
type faultError struct{ v any }

func (e faultError) Error() string {
	return fmt.Sprintf("memory fault reading a mapped index file (filesystem full or I/O error): %v", e.v)
}
func (e faultError) Unwrap() error { return syscall.EIO }

// openIndex opens the Badger index in dir (read-only if readOnly). Errors
// caused by the index's content are *indexDamage; a panic in Badger is one
// of them, never a crash. Before Badger opens the tables (in goroutines of
// its own, where a panic on a damaged table cannot be recovered), every
// table the manifest lists is opened and checksummed here.
func openIndex(dir string, log *slog.Logger, readOnly bool) (db *badger.DB, err error) {
	opts := badgerOptions(dir, log).WithReadOnly(readOnly)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			db = nil
			if _, fault := r.(interface{ Addr() uintptr }); fault {
				err = faultError{r}
				return
			}
			err = &indexDamage{fmt.Errorf("badger panicked: %s", panicText(r))}
		}
	}()
	if err := checkTables(dir, opts); err != nil {
		return nil, classify(err)
	}
	db, err = badger.Open(opts)
	if err != nil {
		// Badger returns a half-built DB with some errors; it has
		// cleaned it up already and it must not be closed.
		return nil, classify(err)
	}
	return db, nil
}

// checkTables replays dir's MANIFEST and opens every table it lists with
// checksums verified, as Badger will open them. A missing MANIFEST is no
// damage (a new index, or one Badger will refuse for its own reasons).
func checkTables(dir string, opts badger.Options) error {
	f, err := os.Open(filepath.Join(dir, badger.ManifestFilename))
	if errors.Is(err, fs.ErrNotExist) {
		if indexExists(dir) { // Badger would drop every table silently
			return &indexDamage{fmt.Errorf("%s is missing", badger.ManifestFilename)}
		}
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	mf, _, err := badger.ReplayManifestFile(f, opts.ExternalMagicVersion, opts)
	if err != nil {
		return &indexDamage{fmt.Errorf("%s: %w", badger.ManifestFilename, err)}
	}
	for id, tm := range mf.Tables {
		if err := checkTable(table.NewFilename(id, dir), tm, opts); err != nil {
			return err
		}
	}
	return nil
}

// checkTable opens one table read-only, verifies its checksums and unmaps
// it. A panic inside Badger's table code is an *indexDamage.
func checkTable(path string, tm badger.TableManifest, opts badger.Options) (err error) {
	if tm.KeyID != 0 {
		return &indexDamage{fmt.Errorf("%s: encrypted table (key %d) in an unencrypted index", filepath.Base(path), tm.KeyID)}
	}
	mf, err := z.OpenMmapFile(path, os.O_RDONLY, 0)
	if err != nil {
		return classify(err)
	}
	defer func() {
		if r := recover(); r != nil {
			if _, fault := r.(interface{ Addr() uintptr }); fault {
				err = faultError{r}
			} else {
				err = &indexDamage{fmt.Errorf("%s: %s", filepath.Base(path), panicText(r))}
			}
		}
		// OpenTable closes (and unmaps) the file itself when it fails: a
		// second Close would unmap the range again, by then possibly
		// memory of someone else. A closed file's Fd is ^uintptr(0).
		if mf.Fd != nil && mf.Fd.Fd() != ^uintptr(0) {
			_ = mf.Close(-1)
		}
	}()
	_, err = table.OpenTable(mf, table.Options{
		ReadOnly:    true,
		ChkMode:     options.OnTableRead,
		Compression: tm.Compression,
		BlockSize:   opts.BlockSize,
		TableSize:   uint64(opts.BaseTableSize),
	})
	if err != nil {
		return &indexDamage{fmt.Errorf("%s: %w", filepath.Base(path), err)}
	}
	return nil
}

// panicText is a recovered panic value on one line, shortened (Badger's
// table panics carry a multi-line dump).
func panicText(r any) string {
	s := strings.Join(strings.Fields(fmt.Sprint(r)), " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// moveAside renames the damaged index dir to dir.damaged-<UTC time> and
// removes all but the newest keepDamaged of those. It returns the new name.
func moveAside(dir string, now time.Time) (string, error) {
	base := dir + ".damaged-" + now.UTC().Format("20060102T150405.000000000Z")
	aside := base
	for i := 1; ; i++ {
		if _, err := os.Lstat(aside); errors.Is(err, fs.ErrNotExist) {
			break
		}
		aside = fmt.Sprintf("%s-%d", base, i)
	}
	if err := os.Rename(dir, aside); err != nil {
		return "", err
	}
	parent := filepath.Dir(dir)
	ents, err := os.ReadDir(parent)
	if err != nil {
		return aside, nil // pruning is best effort
	}
	prefix := filepath.Base(dir) + ".damaged-"
	var old []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			old = append(old, e.Name())
		}
	}
	sort.Strings(old) // the timestamp format sorts by time
	for len(old) > keepDamaged {
		if filepath.Join(parent, old[0]) != aside {
			_ = os.RemoveAll(filepath.Join(parent, old[0]))
		}
		old = old[1:]
	}
	return aside, nil
}

// freeBytes is the space this process may still write on the filesystem
// of dir (root may use the blocks reserved for root).
func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	blocks := st.Bavail
	if os.Geteuid() == 0 {
		blocks = st.Bfree
	}
	return int64(blocks) * int64(st.Bsize), nil
}

func (t *Tier) indexDir() string { return filepath.Join(t.root, "index") }

// loadIndex opens the index for Open: read-only when the filesystem has
// less than IndexReserve free; moved aside and rebuilt when damaged; in
// memory when it must be built and there is no room for it.
func (t *Tier) loadIndex() error {
	dir := t.indexDir()
	low := !t.hasRoom()
	exists := indexExists(dir)
	if exists {
		mode := modeDisk
		if low {
			mode = modeReadOnly
		}
		db, err := openIndex(dir, t.cfg.Logger, mode == modeReadOnly)
		if err == nil {
			t.db = db
			t.mode.Store(mode)
			if mode == modeReadOnly {
				t.cfg.Logger.Warn("disk tier: filesystem full; index opened read-only (blobs can be read, evicted and verified; nothing is stored until space is freed)",
					"tier", t.cfg.Name, "root", t.root)
			}
			return nil
		}
		var dmg *indexDamage
		if !errors.As(err, &dmg) {
			return fmt.Errorf("disk: open index in %s: %w", t.root, err)
		}
		aside, merr := moveAside(dir, t.cfg.Now())
		if merr != nil {
			return fmt.Errorf("disk: index in %s is damaged (%v) and cannot be moved aside: %w", t.root, err, merr)
		}
		t.rebuilds.Add(1)
		t.cfg.Logger.Error("disk tier: index damaged; moved aside and rebuilt from the blob files "+
			"(its refs are lost: tags are resolved, access proven and ext4 images found or converted again on next use)",
			"tier", t.cfg.Name, "root", t.root, "movedTo", aside, "err", err)
	} else if err := os.RemoveAll(dir); err != nil { // leftovers without a MANIFEST
		return fmt.Errorf("disk: clear index directory %s: %w", dir, err)
	}
	t.created = true
	if !low {
		db, err := openIndex(dir, t.cfg.Logger, false)
		if err != nil {
			return fmt.Errorf("disk: create index in %s: %w", t.root, err)
		}
		t.db = db
		t.mode.Store(modeDisk)
		return nil
	}
	db, err := badger.Open(badgerOptions("", t.cfg.Logger).WithInMemory(true))
	if err != nil {
		return fmt.Errorf("disk: create in-memory index for %s: %w", t.root, err)
	}
	t.db = db
	t.mode.Store(modeMemory)
	t.cfg.Logger.Warn("disk tier: filesystem full and no index on disk; the index is kept in memory until the next open",
		"tier", t.cfg.Name, "root", t.root)
	return nil
}

// indexExists reports whether dir holds a Badger index: a MANIFEST, or any
// of the files Badger writes (an index that lost its MANIFEST is damaged,
// not new).
func indexExists(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return !errors.Is(err, fs.ErrNotExist) // let Badger report what is wrong
	}
	for _, e := range ents {
		n := e.Name()
		if n == badger.ManifestFilename || strings.HasSuffix(n, ".sst") || strings.HasSuffix(n, ".vlog") || strings.HasSuffix(n, ".mem") {
			return true
		}
	}
	return false
}

// hasRoom reports whether the filesystem of the root has IndexReserve
// free (true when that cannot be told).
func (t *Tier) hasRoom() bool {
	free, err := freeBytes(t.root)
	return err != nil || free >= IndexReserve
}

// checkRoom returns an error wrapping syscall.ENOSPC unless the root's
// filesystem has room for the index after a new blob.
func (t *Tier) checkRoom() error {
	if !t.hasRoom() {
		return errNoSpace
	}
	return nil
}

// indexWritable returns nil if the index may take a write now, else an
// error wrapping syscall.ENOSPC. An index opened read-only is reopened
// read-write once the filesystem has room again, and the deletions made
// meanwhile are written.
func (t *Tier) indexWritable() error {
	switch t.mode.Load() {
	case modeMemory:
		return nil
	case modeReadOnly:
		if err := t.checkRoom(); err != nil {
			return err
		}
		return t.reopenWritable()
	}
	if err := t.checkRoom(); err != nil {
		return err
	}
	if rows, refs := t.hiddenCounts(); rows+refs > 0 {
		_ = t.withDB(func(db *badger.DB) error { t.writeHidden(db); return nil })
	}
	return nil
}

// reopenWritable replaces a read-only index with a read-write one and
// writes the deletions hidden meanwhile.
func (t *Tier) reopenWritable() error {
	t.upMu.Lock()
	defer t.upMu.Unlock()
	if t.mode.Load() != modeReadOnly {
		return nil
	}
	t.life.Lock()
	defer t.life.Unlock()
	if t.closed {
		return t.errClosed()
	}
	if err := t.db.Close(); err != nil {
		t.cfg.Logger.Warn("disk tier: close read-only index", "tier", t.cfg.Name, "err", err)
	}
	db, err := openIndex(t.indexDir(), t.cfg.Logger, false)
	if err != nil {
		// Stay read-only; if even that fails the tier is unusable.
		ro, rerr := openIndex(t.indexDir(), t.cfg.Logger, true)
		if rerr != nil {
			t.closed = true
			t.cfg.Logger.Error("disk tier: index lost while reopening it", "tier", t.cfg.Name, "root", t.root, "err", rerr)
			return fmt.Errorf("%w: disk tier %q: reopen index: %v", blob.ErrUnavailable, t.cfg.Name, rerr)
		}
		t.db = ro
		return fmt.Errorf("reopen index read-write: %w", err)
	}
	t.db = db
	t.mode.Store(modeDisk)
	rows, refs := t.writeHidden(db)
	t.cfg.Logger.Info("disk tier: filesystem has room again; index reopened read-write", "tier", t.cfg.Name, "root", t.root,
		"rowsDeleted", rows, "refsDeleted", refs)
	return nil
}

// writeHidden deletes from db the rows and refs hidden while the index
// could not be written, and stops hiding those it deleted. A row whose
// file is back (stored again) is only unhidden by that Put.
func (t *Tier) writeHidden(db *badger.DB) (rows, refs int) {
	t.hideMu.Lock()
	hr := make([]string, 0, len(t.hiddenRows))
	for hex := range t.hiddenRows {
		hr = append(hr, hex)
	}
	hf := make([]string, 0, len(t.hiddenRefs))
	for k := range t.hiddenRefs {
		hf = append(hf, k)
	}
	t.hideMu.Unlock()
	if len(hr)+len(hf) == 0 {
		return 0, 0
	}
	var gone []string
	for _, hex := range hr {
		if _, err := os.Lstat(t.path(hex)); errors.Is(err, fs.ErrNotExist) {
			gone = append(gone, hex)
		}
	}
	wb := db.NewWriteBatch()
	defer wb.Cancel()
	err := func() error {
		for _, hex := range gone {
			if err := wb.Delete(blobKey(hex)); err != nil {
				return err
			}
		}
		for _, k := range hf {
			if err := wb.Delete([]byte(k)); err != nil {
				return err
			}
		}
		return wb.Flush()
	}()
	if err != nil {
		t.cfg.Logger.Warn("disk tier: write deletions made while the filesystem was full", "tier", t.cfg.Name, "err", err)
		return 0, 0
	}
	t.hideMu.Lock()
	for _, hex := range gone {
		delete(t.hiddenRows, hex)
	}
	for _, k := range hf {
		delete(t.hiddenRefs, k)
	}
	t.hideMu.Unlock()
	return len(gone), len(hf)
}

// hideRow makes hex's row invisible until the index is written again.
func (t *Tier) hideRow(hex string) {
	t.hideMu.Lock()
	t.hiddenRows[hex] = struct{}{}
	t.hideMu.Unlock()
}

func (t *Tier) unhideRow(hex string) {
	t.hideMu.Lock()
	delete(t.hiddenRows, hex)
	t.hideMu.Unlock()
}

func (t *Tier) rowHidden(hex string) bool {
	t.hideMu.Lock()
	defer t.hideMu.Unlock()
	_, ok := t.hiddenRows[hex]
	return ok
}

func (t *Tier) hideRef(key []byte) {
	t.hideMu.Lock()
	t.hiddenRefs[string(key)] = struct{}{}
	t.hideMu.Unlock()
}

func (t *Tier) unhideRef(key []byte) {
	t.hideMu.Lock()
	delete(t.hiddenRefs, string(key))
	t.hideMu.Unlock()
}

func (t *Tier) refHidden(key []byte) bool {
	t.hideMu.Lock()
	defer t.hideMu.Unlock()
	_, ok := t.hiddenRefs[string(key)]
	return ok
}

// hiddenCounts reports the deletions not yet written to the index.
func (t *Tier) hiddenCounts() (rows, refs int) {
	t.hideMu.Lock()
	defer t.hideMu.Unlock()
	return len(t.hiddenRows), len(t.hiddenRefs)
}

// IndexRebuilds reports how many times the index was found damaged, moved
// aside (root/index.damaged-<time>, the newest two kept) and rebuilt from
// the blob files: 0 or 1 for one Tier, since that happens in Open.
func (t *Tier) IndexRebuilds() int64 { return t.rebuilds.Load() }

// IndexReadOnly reports whether the index is not being written to disk
// because the filesystem was full: opened read-only (reads, eviction,
// deletion and verification work; Put fails with an error wrapping
// syscall.ENOSPC; deletions are kept in memory and written once the
// filesystem has room, or forgotten by the next Open for rows), or, if it
// had to be built on a full filesystem, kept in memory until the next
// Open.
func (t *Tier) IndexReadOnly() bool { return t.mode.Load() != modeDisk }
