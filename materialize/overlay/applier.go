package overlay

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sync/semaphore"
	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/internal/sparse"
	"github.com/strata-oci/strata/internal/trunc"
	"github.com/strata-oci/strata/materialize/internal/layerio"
)

// Overlayfs forms of the OCI opaque marker.
const (
	trustedOpaque = "trusted.overlay.opaque"
	userOpaque    = "user.overlay.opaque"
)

// applyConfig is what the applier needs from Config.
type applyConfig struct {
	opaqueXattr string
	maxEntries  int64 // <= 0: unlimited
	maxBytes    int64 // bytes of file content (holes included); <= 0: unlimited
	// charge, when set, is called with the size of every write of file
	// content before it is made (holes cost nothing); an error stops the
	// extraction with that error. It carries the budgets that hold while
	// writing: the cache's byte budget, the free space of the file system.
	charge func(n int64) error
	// chargeEntry, when set, is called for every tar entry before it is
	// applied; an error stops the extraction with that error (an image's
	// entry budget).
	chargeEntry func() error
	// sums, when set, receives the sha256 of the content of every regular
	// file written, by inode (hard links share it), for the layer's
	// manifest.
	sums       fileSums
	privileged bool // running with CAP_CHOWN/CAP_MKNOD etc. (euid 0)
	umask      int  // the process umask, when umaskKnown
	umaskKnown bool // without it every file gets a chmod
}

// applyStats counts what one layer's extraction created.
type applyStats struct {
	Entries int64 // tar entries read
	Files   int64 // regular files written
	Bytes   int64 // bytes of regular file content written to disk (holes excluded)
	Logical int64 // bytes of regular file content, holes included
	Skipped int64 // entries skipped (devices or ownership without privilege, overlay-internal xattrs)
	Dropped int64 // entries layerio.Entries dropped (duplicates, entries under a non-directory)
}

// MaxSymlinkTarget is the longest symlink target Linux stores (PATH_MAX
// less the terminating NUL); a longer one is refused with ErrInvalidLayer.
const MaxSymlinkTarget = layerio.MaxSymlinkTarget

// holeBlock is the size of the aligned all-zero blocks that become holes
// in extracted files.
const holeBlock = 4096

// smallFile is the largest regular file the applier hands to its workers
// (see fileJob): its content is read into memory first. Larger files are
// written by the applier's goroutine as they are read.
const smallFile = 1 << 20

// Files go to the workers in batches of up to batchFiles files or
// batchBytes bytes of content (one wake-up of a worker per batch, not per
// file); fileQueue batches may wait. queuedBytes bounds the memory their
// buffers (and those of the files being written) take in all: what one
// layer's extraction holds for them.
const (
	batchFiles  = 16
	batchBytes  = 256 << 10
	fileQueue   = 4
	queuedBytes = 4 << 20
)

// applier writes what layerio.Entries decides about one layer's tar stream
// into a directory in overlayfs form: whiteouts become 0:0 character
// devices, opaque directories get the opaque xattr. Entries hands out
// every parent directory before its children and never an entry under a
// non-directory, so parents are opened with openat2 RESOLVE_BENEATH and
// RESOLVE_NO_SYMLINKS (a symlink on the way is an error, never followed),
// and the final component of an entry is never followed.
//
// Small regular files are written by a few worker goroutines (creating
// files is most of the cost of a layer of small files, and one layer is
// often most of an image): the applier's goroutine reads the entry, opens
// its parent as for any entry and hands the worker the parent's fd, the
// name and the content. Entries hands out one non-directory entry per
// name and none under a non-directory, so a file being written by a
// worker is never the name, nor under the name, of another entry. What
// may depend on such a file waits for the workers to be done (flush): a
// hard link (its target may be one), a change of an existing directory's
// owner or mode (a worker's file in it would inherit it), the removal of
// an existing name, and the directories' final times and modes.
type applier struct {
	cfg      applyConfig
	root     int // fd of the layer directory
	rootPath string
	stats    applyStats
	buf      []byte
	hasher   *fileHasher // of file content, for applyConfig.sums
	// charge is cfg.charge made safe for the workers (nil: none).
	charge func(n int64) error

	// The workers (started with the first small file) and their queue.
	jobs    chan []*fileJob
	batch   []*fileJob          // to send
	batched int                 // bytes of content in batch
	queued  *semaphore.Weighted // of queuedBytes, for the jobs' buffers
	workers []*fileWorker
	wg      sync.WaitGroup // running workers
	pending sync.WaitGroup // jobs queued and not done
	failed  atomic.Bool    // a worker failed: stop
	abort   atomic.Bool    // the extraction stopped: skip what is queued
	werrMu  sync.Mutex
	werr    error // the first worker error

	dirTimes map[string]unix.Timespec
	// Final modes of directories created without owner rwx: they stay
	// writable by their owner (0700 added) while the layer is written, so
	// that a 0555 directory with content extracts without privilege, and
	// get their mode when the layer is done (finishDirs).
	dirModes map[string]uint32

	// A one-entry cache of the current parent directory. Entries of one
	// directory come together in tar streams. The cached fd stays valid:
	// the resolution of a directory can only change through an entry whose
	// parent is one of its ancestors, and such an entry replaces the cache
	// first. Jobs queued for the workers hold references to it.
	cacheRel string
	cache    *dirRef
	// What a file created in the cached directory is owned by.
	createUID, createGID int
	// Whether the cached directory is setgid (a directory made in it is).
	parentSetgid bool
	euid, egid   int
	// A directory got a default ACL: new files and directories get their
	// modes from it, not from the umask, so they are always chmodded.
	defaultACL atomic.Bool
}

// applyLayer extracts the tar stream r into the existing, empty directory
// rootPath. It reads r to its end (so a verifying reader beneath sees EOF)
// and returns the first error: a tar or I/O error, ctx's error, or an error
// wrapping ErrInvalidLayer or ErrLimitExceeded. On error the directory
// holds a partial tree which the caller removes; nothing is ever written
// outside it, and nothing is written once applyLayer has returned.
func applyLayer(ctx context.Context, rootPath string, r io.Reader, cfg applyConfig) (stats applyStats, err error) {
	fd, err := unix.Open(rootPath, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return applyStats{}, &os.PathError{Op: "open", Path: rootPath, Err: err}
	}
	a := &applier{cfg: cfg, root: fd, rootPath: rootPath, dirTimes: map[string]unix.Timespec{}, dirModes: map[string]uint32{},
		euid: os.Geteuid(), egid: os.Getegid()}
	if cfg.charge != nil {
		// Workers write files at once: one charge at a time.
		var mu sync.Mutex
		a.charge = func(n int64) error {
			mu.Lock()
			defer mu.Unlock()
			return cfg.charge(n)
		}
	}
	ents := layerio.NewEntries(r, layerio.EntryLimits{MaxEntries: cfg.maxEntries, MaxBytes: cfg.maxBytes})
	defer func() {
		// The workers are done (nothing is written after this), then
		// every file's sum is in cfg.sums.
		a.stopWorkers()
		if a.hasher != nil {
			a.hasher.stop()
		}
		for _, w := range a.workers {
			for _, s := range w.sums {
				cfg.sums[s.id] = s.sum
			}
			a.stats.add(w.stats)
		}
		a.dropCache()
		unix.Close(a.root)
		st := ents.Stats()
		a.stats.Entries, a.stats.Dropped = st.Headers, st.Dropped
		stats = a.stats
	}()
	var charged int64 // tar headers charged to chargeEntry
	for {
		if err := ctx.Err(); err != nil {
			return a.stats, err
		}
		if a.failed.Load() {
			return a.stats, a.workerErr()
		}
		e, err := ents.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return a.stats, err
		}
		if a.cfg.chargeEntry != nil {
			for ; charged < ents.Stats().Headers; charged++ {
				if err := a.cfg.chargeEntry(); err != nil {
					return a.stats, err
				}
			}
		}
		if err := a.entry(e, ents); err != nil {
			return a.stats, fmt.Errorf("entry %q: %w", trunc.String(e.Name, 200), err)
		}
	}
	if err := a.flush(); err != nil {
		return a.stats, err
	}
	if err := a.finishDirs(); err != nil {
		return a.stats, err
	}
	return a.stats, nil
}

func (s *applyStats) add(o applyStats) {
	s.Files += o.Files
	s.Bytes += o.Bytes
	s.Logical += o.Logical
	s.Skipped += o.Skipped
}

// dirRef is an fd of a directory of the layer shared by the applier's
// parent cache and the jobs queued in it; the last to let go closes it.
type dirRef struct {
	fd   int
	refs atomic.Int32
}

func (d *dirRef) hold() { d.refs.Add(1) }

func (d *dirRef) release() {
	if d.refs.Add(-1) == 0 {
		unix.Close(d.fd)
	}
}

func (a *applier) dropCache() {
	if a.cache != nil {
		a.cache.release()
		a.cache, a.cacheRel = nil, ""
	}
}

func splitRel(rel string) (dir, base string) {
	i := strings.LastIndexByte(rel, '/')
	if i < 0 {
		return "", rel
	}
	return rel[:i], rel[i+1:]
}

// parent returns a borrowed fd of directory rel, which an earlier entry
// made. It stays valid until the next parent call.
func (a *applier) parent(rel string) (int, error) {
	if a.cache != nil && a.cacheRel == rel {
		return a.cache.fd, nil
	}
	fd, err := a.openDir(rel)
	if err != nil {
		return -1, err
	}
	a.dropCache()
	a.cache = &dirRef{fd: fd}
	a.cache.refs.Store(1)
	a.cacheRel = rel
	a.createUID, a.createGID = a.euid, a.egid
	a.parentSetgid = true // unless known otherwise
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		a.createUID = -1 // unknown: always chown
	} else if st.Mode&unix.S_ISGID != 0 {
		a.createGID = int(st.Gid)
	} else {
		a.parentSetgid = false
	}
	return fd, nil
}

// openDir opens directory rel beneath the root and returns an fd the
// caller closes. No symlink is followed on the way.
func (a *applier) openDir(rel string) (int, error) {
	fd, err := a.openat2(rel)
	if err != nil {
		return -1, a.openErr(rel, err)
	}
	return fd, nil
}

func (a *applier) openat2(rel string) (int, error) {
	p := rel
	if p == "" {
		p = "."
	}
	how := unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	}
	for i := 0; ; i++ {
		fd, err := unix.Openat2(a.root, p, &how)
		if (err == unix.EINTR || err == unix.EAGAIN) && i < 16 {
			continue
		}
		return fd, err
	}
}

func (a *applier) openErr(rel string, err error) error {
	return &os.PathError{Op: "open", Path: rel, Err: err}
}

func (a *applier) entry(e *layerio.Entry, content io.Reader) error {
	h := e.Header
	rel := e.Name
	dir, base := splitRel(rel)
	switch e.Kind {
	case layerio.KindOpaque:
		return a.opaque(rel)
	case layerio.KindDir:
		if rel == "" {
			return a.rootDir(h)
		}
	}
	pfd, err := a.parent(dir)
	if err != nil {
		return err
	}
	switch e.Kind {
	case layerio.KindWhiteout:
		return a.whiteout(pfd, rel, base, h)
	case layerio.KindDir:
		if e.Implicit {
			return a.implicitDir(pfd, rel, base)
		}
		return a.dir(pfd, rel, base, h)
	case layerio.KindFile:
		if h.Size <= smallFile {
			return a.queueFile(rel, base, h, content)
		}
		return a.file(pfd, base, h, content)
	case layerio.KindSymlink:
		err := a.create(pfd, base, func() error { return unix.Symlinkat(e.Link, pfd, base) })
		if err != nil {
			return &os.PathError{Op: "symlink", Path: rel, Err: err}
		}
		return a.meta(pfd, base, h, true, true, false)
	case layerio.KindLink:
		return a.link(pfd, base, e.Link, h)
	case layerio.KindChar, layerio.KindBlock, layerio.KindFIFO:
		mode := uint32(unix.S_IFIFO)
		switch e.Kind {
		case layerio.KindChar:
			mode = unix.S_IFCHR
		case layerio.KindBlock:
			mode = unix.S_IFBLK
		}
		dev := int(unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor)))
		err := a.create(pfd, base, func() error { return unix.Mknodat(pfd, base, mode|0o600, dev) })
		if err == unix.EPERM && !a.cfg.privileged && mode != unix.S_IFIFO {
			a.stats.Skipped++ // like containerd in a user namespace: no device nodes without privilege
			return nil
		}
		if err != nil {
			return &os.PathError{Op: "mknod", Path: rel, Err: err}
		}
		return a.meta(pfd, base, h, false, true, false)
	}
	return fmt.Errorf("%w: unexpected entry kind %v", ErrInvalidLayer, e.Kind)
}

// implicitDir makes a directory the layer has no header for (0755, owned
// by root where the applier may chown, epoch times), as the ext4
// flattener synthesizes it.
func (a *applier) implicitDir(pfd int, rel, base string) error {
	err := unix.Mkdirat(pfd, base, 0o755)
	if err == nil {
		// Not subject to the umask; no setgid inherited from the parent.
		err = unix.Fchmodat(pfd, base, 0o755, 0)
	}
	if err == nil && a.cfg.privileged {
		err = unix.Fchownat(pfd, base, 0, 0, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil {
		return &os.PathError{Op: "mkdir", Path: rel, Err: err}
	}
	a.dirTimes[rel] = timespec(time.Time{})
	return nil
}

// create runs mk; if the name exists, it removes what is there (once the
// workers are done) and runs mk again. layerio.Entries hands out one
// non-directory entry per name, so this is a safety net, not a rule about
// duplicates.
func (a *applier) create(pfd int, base string, mk func() error) error {
	err := mk()
	if err != unix.EEXIST {
		return err
	}
	if err := a.flush(); err != nil {
		return err
	}
	if err := removeAllAt(pfd, base); err != nil {
		return err
	}
	return mk()
}

func (a *applier) dir(pfd int, rel, base string, h *tar.Header) error {
	// Made with its mode when nothing would change it after mkdir (the
	// umask, a setgid parent, a default ACL, xattrs): then meta needs no
	// chmod.
	perm, final := writableMode(h), false
	if a.cfg.umaskKnown && perm&0o7000 == 0 && perm&uint32(a.cfg.umask) == 0 && !a.parentSetgid &&
		len(h.PAXRecords) == 0 && !a.defaultACL.Load() {
		final = true
	} else {
		perm = 0o700
	}
	err := unix.Mkdirat(pfd, base, perm)
	fresh := err == nil
	if err == unix.EEXIST {
		final = false
		// Its owner and mode change: files the workers have yet to create
		// in it must not inherit them.
		if err := a.flush(); err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &os.PathError{Op: "stat", Path: rel, Err: err}
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			err = a.create(pfd, base, func() error { return unix.Mkdirat(pfd, base, 0o700) })
		} else {
			err = nil // a directory again: keep its contents, update its metadata
		}
	}
	if err != nil {
		return &os.PathError{Op: "mkdir", Path: rel, Err: err}
	}
	if err := a.meta(pfd, base, h, false, fresh, final); err != nil {
		return err
	}
	a.dirTimes[rel] = timespec(h.ModTime)
	a.deferMode(rel, h)
	return nil
}

// deferMode records the final mode of directory rel when it lacks owner
// rwx (meta and rootDir give such a directory its mode with 0700 added).
func (a *applier) deferMode(rel string, h *tar.Header) {
	if mode := uint32(h.Mode) & 0o7777; mode&0o700 != 0o700 {
		a.dirModes[rel] = mode
	} else {
		delete(a.dirModes, rel)
	}
}

// writableMode is the mode a directory has while the layer is written.
func writableMode(h *tar.Header) uint32 {
	mode := uint32(h.Mode) & 0o7777
	if h.Typeflag == tar.TypeDir {
		mode |= 0o700
	}
	return mode
}

func (a *applier) rootDir(h *tar.Header) error {
	// The root's owner and setgid bit may change: files queued in it are
	// written first, and the cache forgets what it knew.
	if err := a.flush(); err != nil {
		return err
	}
	a.dropCache()
	if err := a.owner(func(uid, gid int) error { return unix.Fchown(a.root, uid, gid) }, h, &a.stats); err != nil {
		return err
	}
	if err := a.xattrs(h, func(k string, v []byte) error { return unix.Fsetxattr(a.root, k, v, 0) }, &a.stats); err != nil {
		return err
	}
	if err := unix.Fchmod(a.root, writableMode(h)); err != nil {
		return &os.PathError{Op: "chmod", Path: "/", Err: err}
	}
	a.dirTimes[""] = timespec(h.ModTime)
	a.deferMode("", h)
	return nil
}

// file writes a regular file, its content read from tr as it is written.
func (a *applier) file(pfd int, base string, h *tar.Header, tr io.Reader) error {
	if a.buf == nil {
		// Files this large are rare: their buffer and hasher come with
		// the first.
		a.buf = make([]byte, 256<<10)
		if a.cfg.sums != nil {
			a.hasher = newFileHasher(a.cfg.sums, len(a.buf))
		}
	}
	fd, chmod, err := a.createFile(pfd, base, h, false)
	if err != nil {
		return err
	}
	var id fileID
	if a.hasher != nil {
		id, err = fileIDOf(fd, base)
	}
	if err == nil {
		var n, written int64
		n, written, err = a.copyTo(fd, tr, id)
		a.stats.Logical += n
		a.stats.Bytes += written
	}
	if err == nil {
		err = a.fileMeta(fd, pfd, base, h, chmod, a.createUID, a.createGID, &a.stats)
	}
	if cerr := unix.Close(fd); err == nil && cerr != nil {
		err = &os.PathError{Op: "close", Path: base, Err: cerr}
	}
	if err == nil {
		a.stats.Files++
	}
	return err
}

// createFile creates the regular file base in pfd, open for writing, with
// the final permissions of h when the umask leaves them intact and no
// default ACL replaces it (then chmod is false), else 0600 (chmod true:
// fileMeta sets them). A name that is there is removed first: on the
// applier's goroutine (worker false) as create does, by a worker at once.
func (a *applier) createFile(pfd int, base string, h *tar.Header, worker bool) (fd int, chmod bool, err error) {
	perm := uint32(h.Mode) & 0o7777
	createPerm, chmod := uint32(0o600), true
	if a.cfg.umaskKnown && perm&0o7000 == 0 && perm&uint32(a.cfg.umask) == 0 && !a.defaultACL.Load() {
		createPerm, chmod = perm, false
	}
	open := func() (err error) {
		fd, err = unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, createPerm)
		return err
	}
	if worker {
		// A safety net, as in create: layerio.Entries hands out one entry
		// per non-directory name, and a worker's file is never the name
		// of, nor under, another entry.
		err = open()
		if err == unix.EEXIST {
			if err = removeAllAt(pfd, base); err == nil {
				err = open()
			}
		}
	} else {
		err = a.create(pfd, base, open)
	}
	if err != nil {
		return -1, false, &os.PathError{Op: "create", Path: base, Err: err}
	}
	return fd, chmod, nil
}

func fileIDOf(fd int, base string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fileID{}, &os.PathError{Op: "stat", Path: base, Err: err}
	}
	return fileID{uint64(st.Dev), st.Ino}, nil
}

// fileMeta gives the new regular file fd, base in pfd (created there by
// a process owned createUID:createGID), the owner, xattrs, mode (with
// chmod) and times of h, counting what it skips in st.
func (a *applier) fileMeta(fd, pfd int, base string, h *tar.Header, chmod bool, createUID, createGID int, st *applyStats) error {
	if h.Uid != createUID || h.Gid != createGID {
		// A new file in pfd is already owned by createUID:createGID, and
		// chown is needed only to change that.
		if err := a.owner(func(uid, gid int) error { return unix.Fchown(fd, uid, gid) }, h, st); err != nil {
			return err
		}
	}
	// After chown, which clears security.capability and setuid bits.
	if err := a.xattrs(h, func(k string, v []byte) error { return unix.Fsetxattr(fd, k, v, 0) }, st); err != nil {
		return err
	}
	if chmod {
		if err := unix.Fchmod(fd, uint32(h.Mode)&0o7777); err != nil {
			return &os.PathError{Op: "chmod", Path: base, Err: err}
		}
	}
	if err := futimens(fd, &[2]unix.Timespec{atime(h), timespec(h.ModTime)}); err != nil {
		return &os.PathError{Op: "utimes", Path: base, Err: err}
	}
	return nil
}

// futimens sets the access and modification times of the file open as fd
// (utimensat with a NULL path: no lookup).
func futimens(fd int, ts *[2]unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(ts)), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// fileJob is a small regular file for a worker to write: its content is
// in data, its parent directory is dir (held for the job).
type fileJob struct {
	dir                  *dirRef
	rel, base            string
	hdr                  *tar.Header
	data                 *[]byte // h.Size bytes, or fewer if the entry ended early
	n                    int
	createUID, createGID int
}

// fileWorker is one worker's share of the applier's results, merged when
// the workers are done.
type fileWorker struct {
	stats applyStats
	sums  []fileSum
}

type fileSum struct {
	id  fileID
	sum [sha256.Size]byte
}

// jobBufs[i] holds buffers of minJobBuf<<i bytes for fileJobs.
var jobBufs [jobBufClasses]sync.Pool

const (
	minJobBuf     = 32 << 10
	jobBufClasses = 6 // up to smallFile
)

// jobBuf returns a buffer of at least size bytes (size <= smallFile).
func jobBuf(size int64) *[]byte {
	c := 0
	for int64(minJobBuf)<<c < size {
		c++
	}
	if b, ok := jobBufs[c].Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, minJobBuf<<c)
	return &b
}

func putJobBuf(b *[]byte) {
	for c := range jobBufClasses {
		if len(*b) == minJobBuf<<c {
			jobBufs[c].Put(b)
			return
		}
	}
}

// fileWorkers is how many workers one layer's applier starts.
func fileWorkers() int { return min(max(runtime.GOMAXPROCS(0), 2), 4) }

// queueFile reads the content of a small file (h.Size <= smallFile) and
// queues it for a worker, which creates it in the cached parent.
func (a *applier) queueFile(rel, base string, h *tar.Header, content io.Reader) error {
	if a.jobs == nil {
		a.startWorkers()
	}
	buf := jobBuf(h.Size)
	if !a.queued.TryAcquire(int64(len(*buf))) {
		// Wait for the workers to give back buffers: they go on until the
		// queue is closed, and have every batch but this one.
		a.send()
		a.queued.Acquire(context.Background(), int64(len(*buf)))
	}
	// Read to the entry's end, as copyTo does (an entry that ends early is
	// written as far as it goes).
	n := 0
	var err error
	for n < int(h.Size) && err == nil {
		var k int
		k, err = content.Read((*buf)[n:h.Size])
		n += k
	}
	if err != nil && err != io.EOF {
		a.queued.Release(int64(len(*buf)))
		putJobBuf(buf)
		return err
	}
	a.cache.hold()
	a.pending.Add(1)
	a.batch = append(a.batch, &fileJob{dir: a.cache, rel: rel, base: base, hdr: h, data: buf, n: n, createUID: a.createUID, createGID: a.createGID})
	a.batched += n
	if len(a.batch) >= batchFiles || a.batched >= batchBytes {
		a.send()
	}
	return nil
}

// send hands the batch to the workers.
func (a *applier) send() {
	if len(a.batch) > 0 {
		a.jobs <- a.batch
		a.batch, a.batched = make([]*fileJob, 0, batchFiles), 0
	}
}

func (a *applier) startWorkers() {
	a.jobs = make(chan []*fileJob, fileQueue)
	a.queued = semaphore.NewWeighted(queuedBytes)
	for range fileWorkers() {
		w := &fileWorker{}
		a.workers = append(a.workers, w)
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			for b := range a.jobs {
				for _, j := range b {
					a.runJob(w, j)
				}
			}
		}()
	}
}

// runJob writes j's file, or records why it could not.
func (a *applier) runJob(w *fileWorker, j *fileJob) {
	defer a.pending.Done()
	defer func() {
		a.queued.Release(int64(len(*j.data)))
		putJobBuf(j.data)
	}()
	defer j.dir.release()
	if a.abort.Load() || a.failed.Load() {
		return
	}
	var err error
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("overlay: writing a file panicked: %v", r)
		}
		if err != nil {
			a.fail(fmt.Errorf("entry %q: %w", trunc.String(j.rel, 200), err))
		}
	}()
	err = a.writeSmall(w, j)
}

func (a *applier) writeSmall(w *fileWorker, j *fileJob) error {
	pfd, h := j.dir.fd, j.hdr
	fd, chmod, err := a.createFile(pfd, j.base, h, true)
	if err != nil {
		return err
	}
	var id fileID
	if a.cfg.sums != nil {
		id, err = fileIDOf(fd, j.base)
	}
	if err == nil {
		data := (*j.data)[:j.n]
		sw := sparse.NewWriter(fdFile{fd: fd, charge: a.charge}, holeBlock)
		if _, err = sw.Write(data); err == nil && sw.Written() < sw.Size() {
			if _, terr := sw.Finish(); terr != nil {
				err = &os.PathError{Op: "truncate", Path: j.base, Err: terr}
			}
		}
		w.stats.Logical += sw.Size()
		w.stats.Bytes += sw.Written()
		if err == nil && a.cfg.sums != nil {
			w.sums = append(w.sums, fileSum{id: id, sum: sha256.Sum256(data)})
		}
	}
	if err == nil {
		err = a.fileMeta(fd, pfd, j.base, h, chmod, j.createUID, j.createGID, &w.stats)
	}
	if cerr := unix.Close(fd); err == nil && cerr != nil {
		err = &os.PathError{Op: "close", Path: j.base, Err: cerr}
	}
	if err == nil {
		w.stats.Files++
	}
	return err
}

// fail records a worker's error; the first one stands.
func (a *applier) fail(err error) {
	a.werrMu.Lock()
	if a.werr == nil {
		a.werr = err
	}
	a.werrMu.Unlock()
	a.failed.Store(true)
}

func (a *applier) workerErr() error {
	a.werrMu.Lock()
	defer a.werrMu.Unlock()
	return a.werr
}

// flush waits until the queued files are written and returns the first
// worker error.
func (a *applier) flush() error {
	if a.jobs == nil {
		return nil
	}
	a.send()
	a.pending.Wait()
	return a.workerErr()
}

// stopWorkers makes the workers skip what is still queued and waits until
// they have returned.
func (a *applier) stopWorkers() {
	if a.jobs == nil {
		return
	}
	a.abort.Store(true)
	a.send() // for the workers to give back
	close(a.jobs)
	a.wg.Wait()
}

// copyTo writes r to the new, empty file fd, leaving holes for aligned
// all-zero blocks (a run of zeros, or the holes of a sparse tar entry,
// which archive/tar returns as zeros), and, with a hasher, hands every
// byte to it as the content of file id, whose sum it records once the
// whole content was handed over. It returns the logical size and the
// bytes written to disk.
func (a *applier) copyTo(fd int, r io.Reader, id fileID) (logical, written int64, err error) {
	sw := sparse.NewWriter(fdFile{fd: fd, charge: a.charge}, holeBlock)
	for first := true; ; first = false {
		buf := a.buf
		if a.hasher != nil {
			buf = a.hasher.buffer()
		}
		// Whole buffers (a multiple of holeBlock) keep the blocks aligned.
		n := 0
		var rerr error
		for n < len(buf) && rerr == nil {
			var k int
			k, rerr = r.Read(buf[n:])
			n += k
		}
		if n > 0 {
			if _, err := sw.Write(buf[:n]); err != nil {
				a.hasher.discard(buf)
				return sw.Size(), sw.Written(), err
			}
		}
		if rerr != nil && rerr != io.EOF {
			a.hasher.discard(buf)
			return sw.Size(), sw.Written(), rerr
		}
		// The file's sum is recorded only if all of it was read.
		a.hasher.hash(buf[:n], id, first, rerr == io.EOF)
		if rerr == io.EOF {
			break
		}
	}
	if sw.Written() < sw.Size() {
		// A trailing hole: give the file its size.
		if _, err := sw.Finish(); err != nil {
			return sw.Size(), sw.Written(), &os.PathError{Op: "truncate", Path: "", Err: err}
		}
	}
	return sw.Size(), sw.Written(), nil
}

// fdFile is a sparse.File over a file descriptor the applier owns; every
// write is charged first (applyConfig.charge).
type fdFile struct {
	fd     int
	charge func(n int64) error
}

func (f fdFile) WriteAt(p []byte, off int64) (int, error) {
	if f.charge != nil {
		if err := f.charge(int64(len(p))); err != nil {
			return 0, err
		}
	}
	done := 0
	for done < len(p) {
		w, err := unix.Pwrite(f.fd, p[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, &os.PathError{Op: "write", Path: "", Err: err}
		}
		done += w
	}
	return done, nil
}

func (f fdFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := unix.Pread(f.fd, p, off)
	if err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f fdFile) Truncate(size int64) error { return unix.Ftruncate(f.fd, size) }

func (a *applier) link(pfd int, base, target string, h *tar.Header) error {
	// The target may be a file a worker has yet to write.
	if err := a.flush(); err != nil {
		return err
	}
	tdir, tbase := splitRel(target)
	tfd, err := a.openDir(tdir)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("%w: hard link target %q does not exist in the layer", ErrInvalidLayer, trunc.String(h.Linkname, 200))
		}
		return err
	}
	defer unix.Close(tfd)
	var st unix.Stat_t
	if err := unix.Fstatat(tfd, tbase, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if err == unix.ENOENT {
			return fmt.Errorf("%w: hard link target %q does not exist in the layer", ErrInvalidLayer, trunc.String(h.Linkname, 200))
		}
		return &os.PathError{Op: "stat", Path: target, Err: err}
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("%w: hard link to directory %q", ErrInvalidLayer, trunc.String(h.Linkname, 200))
	}
	// Linking a name to itself would first remove the target.
	var self unix.Stat_t
	if unix.Fstatat(pfd, base, &self, unix.AT_SYMLINK_NOFOLLOW) == nil && self.Ino == st.Ino && self.Dev == st.Dev {
		return nil
	}
	// linkat without AT_SYMLINK_FOLLOW links a symlink itself, never what it points at.
	if err := a.create(pfd, base, func() error { return unix.Linkat(tfd, tbase, pfd, base, 0) }); err != nil {
		return &os.PathError{Op: "link", Path: base, Err: err}
	}
	return a.meta(pfd, base, h, st.Mode&unix.S_IFMT == unix.S_IFLNK, false, false)
}

// opaque marks directory rel of the layer ("" the root) opaque.
func (a *applier) opaque(rel string) error {
	fd := a.root
	if rel != "" {
		var err error
		if fd, err = a.openDir(rel); err != nil {
			return err
		}
		defer unix.Close(fd)
	}
	if err := unix.Fsetxattr(fd, a.cfg.opaqueXattr, []byte("y"), 0); err != nil {
		return &os.PathError{Op: "setxattr " + a.cfg.opaqueXattr, Path: "/" + rel, Err: err}
	}
	return nil
}

// rootOpaque reports whether the extracted layer directory dir holds an
// opaque marker at its root: the layers below it are not mounted, since
// overlayfs ignores the opaque xattr of a layer's root.
func rootOpaque(dir string, userXattr bool) bool {
	name := trustedOpaque
	if userXattr {
		name = userOpaque
	}
	var buf [1]byte
	n, err := unix.Lgetxattr(dir, name, buf[:])
	return err == nil && n == 1 && buf[0] == 'y'
}

// whiteout makes the overlayfs form of an OCI whiteout: a 0:0 character
// device.
func (a *applier) whiteout(pfd int, rel, base string, h *tar.Header) error {
	err := a.create(pfd, base, func() error { return unix.Mknodat(pfd, base, unix.S_IFCHR, 0) })
	if err != nil {
		return &os.PathError{Op: "mknod whiteout", Path: rel, Err: err}
	}
	// The marker's time, not the clock's: a layer extracts to the same
	// tree every time (verify compares re-extractions).
	ts := timespec(h.ModTime)
	if err := unix.UtimesNanoAt(pfd, base, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimes whiteout", Path: rel, Err: err}
	}
	return nil
}

// meta sets ownership, xattrs, mode and times on pfd/base (never following
// a final symlink; mode is not set on symlinks). fresh says the applier
// just made pfd/base in the cached parent (so it is owned by
// createUID:createGID), not linked an existing inode; hasMode that it was
// made with the mode meta would set.
func (a *applier) meta(pfd int, base string, h *tar.Header, symlink, fresh, hasMode bool) error {
	if !fresh || h.Uid != a.createUID || h.Gid != a.createGID {
		if err := a.owner(func(uid, gid int) error { return unix.Fchownat(pfd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW) }, h, &a.stats); err != nil {
			return err
		}
	}
	if len(h.PAXRecords) > 0 {
		p := "/proc/self/fd/" + strconv.Itoa(pfd) + "/" + base
		err := a.xattrs(h, func(k string, v []byte) error {
			err := unix.Lsetxattr(p, k, v, 0)
			if symlink && (err == unix.EPERM || err == unix.ENOTSUP) {
				a.stats.Skipped++ // Linux allows no user.* xattrs on symlinks
				return nil
			}
			return err
		}, &a.stats)
		if err != nil {
			return err
		}
	}
	if !symlink && !hasMode {
		// The name was just created by this applier and is not a symlink.
		if err := unix.Fchmodat(pfd, base, writableMode(h), 0); err != nil {
			return &os.PathError{Op: "chmod", Path: base, Err: err}
		}
	}
	if h.Typeflag != tar.TypeDir {
		if err := unix.UtimesNanoAt(pfd, base, []unix.Timespec{atime(h), timespec(h.ModTime)}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &os.PathError{Op: "utimes", Path: base, Err: err}
		}
	}
	return nil
}

// owner sets h's owner with chown, counting in st a change refused for
// want of privilege.
func (a *applier) owner(chown func(uid, gid int) error, h *tar.Header, st *applyStats) error {
	if h.Uid < 0 || h.Gid < 0 || h.Uid > 1<<32-2 || h.Gid > 1<<32-2 {
		return fmt.Errorf("%w: invalid owner %d:%d", ErrInvalidLayer, h.Uid, h.Gid)
	}
	err := chown(h.Uid, h.Gid)
	if err == unix.EPERM && !a.cfg.privileged {
		st.Skipped++
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "chown", Path: h.Name, Err: err}
	}
	return nil
}

// xattrs sets the PAX SCHILY.xattr records, except overlayfs's own
// (a layer must not forge opaque, redirect or metacopy markers), counting
// in st those skipped.
func (a *applier) xattrs(h *tar.Header, set func(k string, v []byte) error, st *applyStats) error {
	for k, v := range h.PAXRecords {
		name, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		if strings.HasPrefix(name, "trusted.overlay.") || strings.HasPrefix(name, "user.overlay.") {
			st.Skipped++
			continue
		}
		if name == "system.posix_acl_default" {
			a.defaultACL.Store(true) // before it is set: a worker may look
		}
		if err := set(name, []byte(v)); err != nil {
			if err == unix.EPERM && !a.cfg.privileged && !strings.HasPrefix(name, "user.") {
				st.Skipped++
				continue
			}
			return &os.PathError{Op: "setxattr " + trunc.String(name, 100), Path: h.Name, Err: err}
		}
	}
	return nil
}

// finishDirs sets directory times after their contents are written, then
// the final modes deferred by deferMode (deepest first: a parent that
// loses its owner's search permission no longer lets its children be
// reached).
func (a *applier) finishDirs() error {
	if err := a.finishDirTimes(); err != nil {
		return err
	}
	rels := make([]string, 0, len(a.dirModes))
	for rel := range a.dirModes {
		rels = append(rels, rel)
	}
	sort.Slice(rels, func(i, j int) bool {
		if di, dj := strings.Count(rels[i], "/"), strings.Count(rels[j], "/"); di != dj {
			return di > dj
		}
		return rels[i] > rels[j] // "" (the root) last
	})
	for _, rel := range rels {
		mode := a.dirModes[rel]
		err := a.atDir(rel, "chmod",
			func() error { return unix.Fchmod(a.root, mode) },
			// A directory, not a symlink: Fchmodat follows nothing here.
			func(pfd int, base string) error { return unix.Fchmodat(pfd, base, mode, 0) })
		if err != nil {
			return err
		}
	}
	return nil
}

func (a *applier) finishDirTimes() error {
	// By parent, so that each parent is opened once.
	rels := make([]string, 0, len(a.dirTimes))
	for rel := range a.dirTimes {
		rels = append(rels, rel)
	}
	sort.Slice(rels, func(i, j int) bool {
		di, bi := splitRel(rels[i])
		dj, bj := splitRel(rels[j])
		if di != dj {
			return di < dj
		}
		return bi < bj
	})
	p := &parentDirs{a: a}
	defer p.close()
	for _, rel := range rels {
		ts := a.dirTimes[rel]
		times := []unix.Timespec{ts, ts}
		err := p.atDir(rel, "utimes",
			func() error { return unix.UtimesNanoAt(a.root, ".", times, 0) },
			func(pfd int, base string) error {
				return unix.UtimesNanoAt(pfd, base, times, unix.AT_SYMLINK_NOFOLLOW)
			})
		if err != nil {
			return err
		}
	}
	return nil
}

// parentDirs keeps the last parent directory atDir opened, for the next
// directory of the same parent.
type parentDirs struct {
	a   *applier
	rel string
	fd  int // -1: rel could not be opened
	ok  bool
}

func (p *parentDirs) close() {
	if p.ok && p.fd >= 0 {
		unix.Close(p.fd)
	}
	p.ok = false
}

// atDir is applier.atDir with the parent kept open.
func (p *parentDirs) atDir(rel, op string, root func() error, at func(pfd int, base string) error) error {
	if rel == "" {
		return p.a.atDir(rel, op, root, at)
	}
	dir, base := splitRel(rel)
	if !p.ok || p.rel != dir {
		p.close()
		fd, err := p.a.openDir(dir)
		if err != nil {
			fd = -1
		}
		p.rel, p.fd, p.ok = dir, fd, true
	}
	return atDirIn(p.fd, rel, base, op, at)
}

// atDir applies a finishing step to the directory rel of the layer: root
// for the layer's root (rel ""), else at on its parent's fd and base name,
// only while rel is still a directory (not a symlink a later entry put
// there; a path a later entry replaced is skipped). Errors name op and rel.
func (a *applier) atDir(rel, op string, root func() error, at func(pfd int, base string) error) error {
	if rel == "" {
		if err := root(); err != nil {
			return &os.PathError{Op: op, Path: "/", Err: err}
		}
		return nil
	}
	dir, base := splitRel(rel)
	pfd, err := a.openDir(dir)
	if err != nil {
		return nil // replaced by a later entry
	}
	defer unix.Close(pfd)
	return atDirIn(pfd, rel, base, op, at)
}

// atDirIn applies at to base in pfd (-1: a parent that could not be
// opened, replaced by a later entry) if it is still a directory.
func atDirIn(pfd int, rel, base, op string, at func(pfd int, base string) error) error {
	if pfd < 0 {
		return nil
	}
	var st unix.Stat_t
	if unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if err := at(pfd, base); err != nil {
			return &os.PathError{Op: op, Path: rel, Err: err}
		}
	}
	return nil
}

// removeAll removes path and everything under it, never following
// symlinks, making directories writable by their owner first (a layer may
// hold 0555 or 0000 directories, which keep an unprivileged owner from
// removing their content). A missing path is not an error.
func removeAll(p string) error {
	p = filepath.Clean(p)
	dir, base := filepath.Split(p)
	if dir == "" {
		dir = "."
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ENOENT {
			return nil
		}
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	if err := removeAllAt(fd, base); err != nil {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return nil
}

// ownerWritable gives directory dirfd/name owner rwx if it lacks it, so
// that its entries can be listed and removed. It never follows a symlink:
// the directory is opened O_PATH|O_NOFOLLOW and changed through its
// /proc/self/fd link.
func ownerWritable(dirfd int, name string) error {
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&0o700 == 0o700 {
		return nil
	}
	return unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), (st.Mode&0o7777)|0o700)
}

// removeAllAt removes dirfd/name and, for a directory, everything in it,
// never following symlinks; directories are made writable by their owner
// first.
func removeAllAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || err == unix.ENOENT {
		return nil
	}
	if err != unix.EISDIR && err != unix.EPERM {
		return &os.PathError{Op: "unlink", Path: name, Err: err}
	}
	err = unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
	if err == nil || err == unix.ENOENT {
		return nil
	}
	if err != unix.ENOTEMPTY && err != unix.EEXIST {
		return &os.PathError{Op: "rmdir", Path: name, Err: err}
	}
	if err := ownerWritable(dirfd, name); err != nil && err != unix.ENOENT {
		return &os.PathError{Op: "chmod", Path: name, Err: err}
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: name, Err: err}
	}
	f := os.NewFile(uintptr(fd), name)
	for {
		names, rerr := f.Readdirnames(256)
		for _, n := range names {
			if err := removeAllAt(fd, n); err != nil {
				f.Close()
				return err
			}
		}
		if rerr == io.EOF || len(names) == 0 {
			break
		}
		if rerr != nil {
			f.Close()
			return rerr
		}
	}
	f.Close()
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && err != unix.ENOENT {
		return &os.PathError{Op: "rmdir", Path: name, Err: err}
	}
	return nil
}

// processUmask reads the umask (Linux 4.7 and later) without changing it.
// It reads the current thread's: /proc/self is the main thread, which may
// hold a private copy of the umask (a thread Result.Mount unshared ends up
// parked there when the mount ran on the main thread).
func processUmask() (int, bool) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b, err := os.ReadFile("/proc/self/task/" + strconv.Itoa(unix.Gettid()) + "/status")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			u, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			return int(u), err == nil
		}
	}
	return 0, false
}

func timespec(t time.Time) unix.Timespec {
	if t.IsZero() {
		t = time.Unix(0, 0)
	}
	return unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
}

func atime(h *tar.Header) unix.Timespec {
	if !h.AccessTime.IsZero() {
		return timespec(h.AccessTime)
	}
	return timespec(h.ModTime)
}
