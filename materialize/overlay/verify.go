package overlay

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/safego"
	"github.com/strata-oci/strata/internal/trunc"
)

// A layer's manifest (meta/<hex>.files) lists every entry of its directory
// in walk order (a directory, then its entries by name, depth first), one
// line each:
//
//	"path" type mode uid gid size rdev sha256 xattrs ["link target"]
//
// path is relative to the layer directory ("." for it), quoted (Go
// syntax); type is one of d f l c b p s; mode the permission bits in
// octal; size and sha256 those of a regular file's content ("-" for
// others); rdev a device's number; xattrs a digest of the extended
// attributes ("-" for none; security.selinux is left out, as a relabel
// is no tampering); the link target that of a symlink. A directory whose
// entries could not be listed is followed by a line "path/" !. The first
// line names the format.
const (
	manifestSuffix = ".files"
	manifestHeader = "strata-overlay-files 1"
)

// fileID names an inode.
type fileID struct{ dev, ino uint64 }

// fileSums are the sha256 of the files an applier wrote, by inode.
type fileSums map[fileID][sha256.Size]byte

// fileHasher hashes the content of the files an applier writes on a
// goroutine of its own, so that hashing overlaps reading and writing the
// layer, and records each file's sha256 in sums. Its methods are for one
// goroutine (the applier's); sums is complete, and only then safe to read,
// once stop has returned. A nil *fileHasher hashes nothing.
type fileHasher struct {
	sums fileSums
	work chan hashChunk
	free chan []byte // buffers the hasher is done with
	done chan struct{}
}

// hashChunk is a part of one file's content, in order.
type hashChunk struct {
	buf   []byte
	id    fileID
	first bool // the file's first chunk
	last  bool // the file's last chunk: record its sum
}

// hashBuffers is how many buffers a fileHasher cycles through: the one
// being filled, and those queued or being hashed.
const hashBuffers = 4

// contentBufPool holds buffers that file content is read or hashed
// through, 256 KiB unless a fileHasher of another size put them: those of
// fileHashers that stopped, and compareManifest's.
var contentBufPool = sync.Pool{New: func() any {
	b := make([]byte, 256<<10)
	return &b
}}

func newFileHasher(sums fileSums, size int) *fileHasher {
	h := &fileHasher{sums: sums, work: make(chan hashChunk, hashBuffers), free: make(chan []byte, hashBuffers), done: make(chan struct{})}
	for range hashBuffers {
		b := contentBufPool.Get().(*[]byte)
		if len(*b) != size {
			nb := make([]byte, size)
			b = &nb
		}
		h.free <- *b
	}
	go h.run()
	return h
}

func (h *fileHasher) run() {
	defer close(h.done)
	d := sha256.New()
	var sum [sha256.Size]byte
	for c := range h.work {
		if c.first {
			d.Reset()
		}
		d.Write(c.buf)
		h.free <- c.buf[:cap(c.buf)]
		if c.last {
			h.sums[c.id] = [sha256.Size]byte(d.Sum(sum[:0]))
		}
	}
}

// buffer returns a buffer to fill with content, for hash or discard.
func (h *fileHasher) buffer() []byte { return <-h.free }

// hash hands over buf (from buffer), the next part of file id's content;
// first says it is the file's first part, last its last (the file's sum
// is recorded then, and only then).
func (h *fileHasher) hash(buf []byte, id fileID, first, last bool) {
	if h != nil {
		h.work <- hashChunk{buf: buf, id: id, first: first, last: last}
	}
}

// discard gives back a buffer that is not to be hashed.
func (h *fileHasher) discard(buf []byte) {
	if h != nil {
		h.free <- buf[:cap(buf)]
	}
}

// stop waits until everything handed over is hashed and recorded.
func (h *fileHasher) stop() {
	close(h.work)
	<-h.done
	for {
		select {
		case b := <-h.free:
			contentBufPool.Put(&b)
		default:
			return // all given back (or one held by a Read that panicked)
		}
	}
}

func (m *Materializer) manifestPath(hex string) string {
	return m.path("meta", hex+manifestSuffix)
}

// manifestEntry is one line of a manifest.
type manifestEntry struct {
	path   string
	fields string // everything after the path
}

func parseManifestLine(line string) (manifestEntry, error) {
	q, err := strconv.QuotedPrefix(line)
	if err != nil || len(line) < len(q)+2 || line[len(q)] != ' ' {
		return manifestEntry{}, fmt.Errorf("malformed manifest line %q", trunc.String(line, 200))
	}
	p, err := strconv.Unquote(q)
	if err != nil {
		return manifestEntry{}, fmt.Errorf("malformed manifest line %q", trunc.String(line, 200))
	}
	return manifestEntry{path: p, fields: line[len(q)+1:]}, nil
}

// hashFunc appends to dst the hex sha256 of the regular file at rel (with
// its lstat st), or nothing when its content cannot be read (permission).
// walkLayer calls it from several goroutines at once, for different
// entries: it must be safe for concurrent use (no buffer or counter shared
// without a lock or an atomic), and dst is its caller's to append to.
type hashFunc func(dst []byte, rel string, st *syscall.Stat_t) ([]byte, error)

// walkWorkers is how many goroutines compute the entries of a walkLayer
// (0: runtime.GOMAXPROCS(0), at least 2). Tests set it.
var walkWorkers = 0

// walkWindow bounds the entries of a walkLayer in flight: listed, and not
// yet emitted. Tests set it.
var walkWindow = 4096

// entryCheck, when not nil, is called with every entry's lstat before its
// fields are computed (concurrently, like hashFunc); an error it returns
// is that entry's.
type entryCheck func(rel string, st *syscall.Stat_t) error

// walkLayer calls emit with the path and the fields of the manifest entry
// of every entry of dir, in walk order (check, when not nil, sees each
// entry's lstat first). fields is valid only during the
// call. emit is called on the calling goroutine, one entry at a time; the
// entries' lstat, link target, sum and extended attributes are computed
// ahead on several goroutines, so sum is called concurrently (see
// hashFunc), and for entries after one that fails. The error returned is
// the first in walk order (no entry after it is emitted): the walk's, one
// from sum, from emit, or ctx's. walkLayer returns only after every call
// to sum has returned.
func walkLayer(ctx context.Context, dir string, sum hashFunc, check entryCheck, emit func(path string, fields []byte) error) error {
	dir = filepath.Clean(dir)
	workers := walkWorkers
	if workers <= 0 {
		workers = max(runtime.GOMAXPROCS(0), 2)
	}
	ring := getWalkRing()
	defer putWalkRing(ring)
	w := &layerWalk{
		dir:      dir,
		prefix:   dir + string(filepath.Separator),
		sum:      sum,
		check:    check,
		slots:    *ring,
		inflight: make(chan struct{}, len(*ring)),
		jobs:     make(chan int, len(*ring)),
		done:     make(chan int, len(*ring)),
		quit:     make(chan struct{}),
	}
	w.stopAt.Store(math.MaxInt64)
	var wg sync.WaitGroup
	defer func() {
		// Whatever ended the walk (an error, emit's panic), nothing more
		// is listed or computed, and nothing runs once this returns.
		w.stopAt.Store(-1)
		close(w.quit)
		wg.Wait()
	}()
	wg.Go(func() { w.list(ctx) })
	for range workers {
		wg.Go(func() { w.compute(ctx) })
	}
	return w.emit(emit)
}

// layerWalk is one walkLayer: a goroutine lists the entries (in walk
// order, each numbered and given the slot number%len(slots)), workers
// compute their fields into their slots, and the caller emits the slots
// in order.
type layerWalk struct {
	dir, prefix string
	sum         hashFunc
	check       entryCheck
	slots       []walkSlot
	inflight    chan struct{} // a token per entry listed and not yet emitted
	jobs        chan int      // entries listed, to compute
	done        chan int      // entries ready to emit (computed, or listed with nothing to compute)
	quit        chan struct{} // closed when the walk ends
	stopAt      atomic.Int64  // the first entry that failed: none after it is needed
}

// walkSlot is an entry of a walk in flight.
type walkSlot struct {
	p, rel string // its path, and that relative to the layer directory
	fields []byte // its manifest line's fields, once computed
	err    error  // the error that ends the walk here
	end    bool   // the walk ends here, without error
	ready  bool   // in done (the emitter's own)
}

// walkRingPool holds rings of walkWindow slots, with their fields buffers.
var walkRingPool sync.Pool

func getWalkRing() *[]walkSlot {
	r, _ := walkRingPool.Get().(*[]walkSlot)
	if r == nil || len(*r) != walkWindow {
		s := make([]walkSlot, walkWindow)
		r = &s
	}
	return r
}

func putWalkRing(r *[]walkSlot) {
	for i := range *r {
		s := &(*r)[i]
		f := s.fields
		if cap(f) > 1024 { // a long link target's
			f = nil
		}
		*s = walkSlot{fields: f[:0]}
	}
	walkRingPool.Put(r)
}

// errWalkStopped ends the listing of a walk that needs no more entries.
var errWalkStopped = errors.New("walk stopped")

// list numbers the entries of the layer in walk order and hands them to
// the workers, or straight to the emitter when there is nothing to
// compute; then the end (or the walk's error).
func (w *layerWalk) list(ctx context.Context) {
	defer close(w.jobs)
	seq := 0
	err := w.listEntries(ctx, &seq)
	if err == errWalkStopped {
		return
	}
	s, serr := w.next(seq)
	if serr != nil {
		return
	}
	s.err, s.end = err, err == nil
	w.done <- seq
}

func (w *layerWalk) listEntries(ctx context.Context, seq *int) (err error) {
	defer safego.Recover(&err, "overlay: walk layer")
	return filepath.WalkDir(w.dir, func(p string, d fs.DirEntry, err error) error {
		rel, ok := strings.CutPrefix(p, w.prefix)
		if !ok {
			var rerr error
			if rel, rerr = filepath.Rel(w.dir, p); rerr != nil {
				return rerr
			}
		}
		if err != nil {
			if d != nil && d.IsDir() && errors.Is(err, fs.ErrPermission) {
				// Entries of a directory this process may not list.
				s, err := w.next(*seq)
				if err != nil {
					return err
				}
				s.rel, s.fields = rel+"/", append(s.fields[:0], '!')
				w.done <- *seq
				*seq++
				return fs.SkipDir
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		s, err := w.next(*seq)
		if err != nil {
			return err
		}
		s.p, s.rel = p, rel
		w.jobs <- *seq
		*seq++
		return nil
	})
}

// next returns the slot of entry seq, once it is free (at most
// len(w.slots) entries are in flight, so jobs and done never block), or
// errWalkStopped when the walk needs no more entries.
func (w *layerWalk) next(seq int) (*walkSlot, error) {
	select {
	case w.inflight <- struct{}{}:
	case <-w.quit:
		return nil, errWalkStopped
	}
	if int64(seq) > w.stopAt.Load() {
		return nil, errWalkStopped
	}
	s := &w.slots[seq%len(w.slots)]
	if cap(s.fields) == 0 {
		s.fields = make([]byte, 0, 128) // a file's line, xattrs included
	}
	s.err, s.end = nil, false
	return s, nil
}

// compute computes the fields of the entries listed, until there are no
// more; it skips those after one that failed.
func (w *layerWalk) compute(ctx context.Context) {
	for i := range w.jobs {
		if int64(i) > w.stopAt.Load() {
			continue
		}
		s := &w.slots[i%len(w.slots)]
		if err := w.computeFields(ctx, s); err != nil {
			s.err = err
			for {
				at := w.stopAt.Load()
				if int64(i) >= at || w.stopAt.CompareAndSwap(at, int64(i)) {
					break
				}
			}
		}
		w.done <- i
	}
}

// computeFields computes the fields of s; a panic becomes an error that
// names the entry.
func (w *layerWalk) computeFields(ctx context.Context, s *walkSlot) (err error) {
	defer func() { // runs after Recover has turned a panic into err
		if errors.Is(err, safego.ErrPanic) {
			err = fmt.Errorf("%s: %w", trunc.String(s.p, 200), err)
		}
	}()
	defer safego.Recover(&err, "overlay: walk layer")
	if err := ctx.Err(); err != nil {
		return err
	}
	s.fields, err = appendEntryFields(s.fields[:0], s.p, s.rel, w.sum, w.check)
	if s.rel == "" {
		s.rel = "."
	}
	return err
}

// emit calls emit with the entries in order, as they are ready, until
// the end or an error.
func (w *layerWalk) emit(emit func(path string, fields []byte) error) error {
	n := len(w.slots)
	for c := 0; ; c++ {
		s := &w.slots[c%n]
		for !s.ready {
			i := <-w.done
			w.slots[i%n].ready = true
		}
		s.ready = false
		switch {
		case s.err != nil:
			return s.err
		case s.end:
			return nil
		}
		if err := emit(s.rel, s.fields); err != nil {
			return err
		}
		<-w.inflight
	}
}

// appendEntryFields appends to dst the fields of the manifest entry of p
// (rel relative to the layer directory): "type mode uid gid size rdev
// sha256 xattrs" and, for a symlink, its target (see manifestHeader).
func appendEntryFields(fields []byte, p, rel string, sum hashFunc, check entryCheck) ([]byte, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return fields, &os.PathError{Op: "lstat", Path: p, Err: err}
	}
	if check != nil {
		if err := check(rel, &st); err != nil {
			return fields, err
		}
	}
	var err error
	typ, rdev, link := byte('?'), uint64(0), ""
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		typ = 'd'
	case syscall.S_IFREG:
		typ = 'f'
	case syscall.S_IFLNK:
		typ = 'l'
		if link, err = os.Readlink(p); err != nil {
			return fields, err
		}
	case syscall.S_IFCHR:
		typ, rdev = 'c', uint64(st.Rdev)
	case syscall.S_IFBLK:
		typ, rdev = 'b', uint64(st.Rdev)
	case syscall.S_IFIFO:
		typ = 'p'
	case syscall.S_IFSOCK:
		typ = 's'
	}
	fields = append(fields, typ, ' ')
	fields = strconv.AppendUint(fields, uint64(st.Mode&0o7777), 8)
	fields = append(fields, ' ')
	fields = strconv.AppendUint(fields, uint64(st.Uid), 10)
	fields = append(fields, ' ')
	fields = strconv.AppendUint(fields, uint64(st.Gid), 10)
	fields = append(fields, ' ')
	if typ == 'f' {
		fields = strconv.AppendInt(fields, st.Size, 10)
	} else {
		fields = append(fields, '-')
	}
	fields = append(fields, ' ')
	fields = strconv.AppendUint(fields, rdev, 10)
	fields = append(fields, ' ')
	if typ == 'f' {
		n := len(fields)
		if fields, err = sum(fields, rel, &st); err != nil {
			return fields, err
		}
		if len(fields) == n {
			fields = append(fields, '?')
		}
	} else {
		fields = append(fields, '-')
	}
	fields = append(fields, ' ')
	if fields, err = appendXattrDigest(fields, p); err != nil {
		return fields, err
	}
	if typ == 'l' {
		fields = append(fields, ' ')
		fields = strconv.AppendQuote(fields, link)
	}
	return fields, nil
}

// appendXattrDigest appends xattrDigest(p) to dst.
func appendXattrDigest(dst []byte, p string) ([]byte, error) {
	s, err := xattrDigest(p)
	return append(dst, s...), err
}

// xattrDigest returns a digest of the extended attributes of p (not
// following a symlink), security.selinux left out, or "-" for none.
func xattrDigest(p string) (string, error) {
	n, err := unix.Llistxattr(p, nil)
	if err != nil {
		if err == unix.ENOTSUP {
			return "-", nil
		}
		return "", &os.PathError{Op: "listxattr", Path: p, Err: err}
	}
	if n == 0 {
		return "-", nil
	}
	buf := make([]byte, n)
	if n, err = unix.Llistxattr(p, buf); err != nil {
		return "", &os.PathError{Op: "listxattr", Path: p, Err: err}
	}
	var names []string
	for _, k := range strings.Split(string(buf[:n]), "\x00") {
		if k != "" && k != "security.selinux" {
			names = append(names, k)
		}
	}
	if len(names) == 0 {
		return "-", nil
	}
	sort.Strings(names)
	h := sha256.New()
	for _, k := range names {
		v := make([]byte, 256)
		for {
			vn, err := unix.Lgetxattr(p, k, v)
			if err == unix.ERANGE {
				v = make([]byte, len(v)*4)
				continue
			}
			if err != nil {
				return "", &os.PathError{Op: "getxattr " + trunc.String(k, 100), Path: p, Err: err}
			}
			v = v[:vn]
			break
		}
		fmt.Fprintf(h, "%d:%s%d:", len(k), k, len(v))
		h.Write(v)
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

// errChangedAfterExtraction: an entry of a layer changed after the layer
// was extracted, before its manifest was written.
var errChangedAfterExtraction = errors.New("changed after the layer was extracted")

// writeManifest writes the manifest of the extracted layer dir to path,
// with the file digests the applier recorded in sums. With extracted not
// zero (the time the layer's extraction and commit ended), an entry whose
// inode changed after it (ctime) fails the walk with an error wrapping
// errChangedAfterExtraction: the manifest would record the change.
func writeManifest(ctx context.Context, dir string, sums fileSums, path string, extracted time.Time) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("manifest: %w", cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	w := bufio.NewWriterSize(f, 64<<10)
	fmt.Fprintln(w, manifestHeader)
	sum := func(dst []byte, rel string, st *syscall.Stat_t) ([]byte, error) {
		s, ok := sums[fileID{uint64(st.Dev), st.Ino}]
		if !ok {
			return dst, fmt.Errorf("manifest: %s: no digest recorded", rel)
		}
		return hex.AppendEncode(dst, s[:]), nil
	}
	var check entryCheck
	if !extracted.IsZero() {
		notAfter := extracted.UnixNano()
		check = func(rel string, st *syscall.Stat_t) error {
			if st.Ctim.Nano() > notAfter {
				return fmt.Errorf("%q: %w (ctime %s)", rel, errChangedAfterExtraction, time.Unix(0, st.Ctim.Nano()).UTC().Format(time.RFC3339Nano))
			}
			return nil
		}
	}
	var line []byte // reused from entry to entry
	err = walkLayer(ctx, dir, sum, check, func(path string, fields []byte) error {
		line = strconv.AppendQuote(line[:0], path)
		line = append(line, ' ')
		line = append(line, fields...)
		line = append(line, '\n')
		_, err := w.Write(line)
		return err
	})
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	return nil
}

// Statuses of LayerCheck.
const (
	// LayerOK: the layer directory is as extracted.
	LayerOK = "ok"
	// LayerModified: a file was modified, added or removed (or its type,
	// mode, owner, extended attributes or link target changed) since
	// extraction.
	LayerModified = "modified"
	// LayerUnverifiable: the layer has no manifest (extracted by a version
	// that wrote none) or an unreadable one.
	LayerUnverifiable = "unverifiable"
)

// maxDifferences bounds LayerCheck.Differences.
const maxDifferences = 10

// LayerCheck is what Verify found in one extracted layer.
type LayerCheck struct {
	Digest blob.Digest
	Bytes  int64 // bytes of file content, as recorded at extraction
	Status string
	// Differences describe what changed ("modified usr/bin/sh: content"),
	// at most ten, then "and K more".
	Differences []string
	// Unreadable counts files whose content this process may not read
	// (mode without the owner's read permission, verified without
	// privilege): their metadata is compared, their content is not.
	Unreadable int
	// Leased: the layer is held by a lease (a running sandbox, a mount
	// lease). A modified one is still taken out of service (Removed: no
	// new caller gets it) and its directory removed when the last lease
	// goes; an unverifiable one is kept.
	Leased bool
	// Removed: the layer was dropped; the next Materialize that needs it
	// extracts it again.
	Removed bool
}

// Layers returns the digests of the extracted layers, sorted.
func (m *Materializer) Layers() []blob.Digest {
	m.mu.Lock()
	out := make([]blob.Digest, 0, len(m.layers))
	for d := range m.layers {
		out = append(out, d)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Verify re-checks the extracted layer d against the manifest written when
// it was extracted (waiting for it if the layer was extracted just now): it
// walks the layer directory, hashes every regular
// file, and compares every entry's type, mode, owner, size, content,
// device number, extended attributes and link target, and the set of
// paths. A modified layer is dropped, so the next Materialize extracts it
// again; if a lease holds it, it is taken out of service at once and its
// directory removed when the last lease goes (reported Leased). A
// layer without a manifest is reported LayerUnverifiable, and dropped only
// with removeUnverifiable. A layer that is not extracted is an error
// wrapping blob.ErrNotFound. Safe for concurrent use; the walk runs
// without the materializer's lock.
func (m *Materializer) Verify(ctx context.Context, d blob.Digest, removeUnverifiable bool) (LayerCheck, error) {
	m.mu.Lock()
	e := m.layers[d]
	var manifestDone chan struct{}
	if e != nil {
		manifestDone = e.manifestDone
	}
	m.mu.Unlock()
	if e == nil {
		return LayerCheck{}, fmt.Errorf("overlay: verify layer %s: %w: not extracted", d, blob.ErrNotFound)
	}
	if manifestDone != nil {
		if verifyWaitHook != nil {
			verifyWaitHook(d)
		}
		select {
		case <-manifestDone: // written just after extraction (see writeManifestLater)
		case <-ctx.Done():
			return LayerCheck{}, fmt.Errorf("overlay: verify layer %s: waiting for its manifest: %w", d, ctx.Err())
		}
	}
	res := LayerCheck{Digest: d, Bytes: e.size, Status: LayerOK}
	m.mu.Lock()
	changed, leased := e.changed, e.changedLeased
	m.mu.Unlock()
	if changed != nil {
		// The manifest's walk found the layer changed after its extraction
		// and has taken it out of service already.
		res.Status, res.Differences = LayerModified, []string{changed.Error()}
		res.Leased, res.Removed = leased, true
		return res, nil
	}
	dir := m.path("layers", e.hex)
	diffs, unreadable, err := compareManifest(ctx, dir, m.manifestPath(e.hex))
	switch {
	case errors.Is(err, errNoManifest):
		res.Status = LayerUnverifiable
		res.Differences = []string{err.Error()}
	case err != nil:
		m.mu.Lock()
		gone := m.layers[d] != e
		m.mu.Unlock()
		if gone {
			return LayerCheck{}, fmt.Errorf("overlay: verify layer %s: %w: evicted while it was verified", d, blob.ErrNotFound)
		}
		return LayerCheck{}, fmt.Errorf("overlay: verify layer %s: %w", d, err)
	case len(diffs) > 0:
		res.Status = LayerModified
		res.Differences = diffs
	}
	res.Unreadable = unreadable
	if res.Status == LayerOK || (res.Status == LayerUnverifiable && !removeUnverifiable) {
		return res, nil
	}
	m.mu.Lock()
	var trash string
	switch {
	case m.layers[d] != e:
		// Evicted or replaced meanwhile: nothing of what was checked stays.
	case res.Status == LayerModified:
		trash, res.Leased, err = m.takeOutLocked(e)
		res.Removed = err == nil
	case e.leases > 0:
		res.Leased = true
	default:
		trash, err = m.unindexLocked(e)
		res.Removed = err == nil
	}
	m.mu.Unlock()
	if err != nil {
		return res, fmt.Errorf("overlay: drop layer %s: %w", d, err)
	}
	if trash != "" {
		if err := removeAll(trash); err != nil {
			return res, fmt.Errorf("overlay: drop layer %s: %w", d, err)
		}
	}
	return res, nil
}

// takeOutLocked takes the modified layer e out of service at once, so that
// no new caller gets it (the next Materialize extracts it again). Its
// directory is returned for removal (trash) or, while leases hold it
// (leased), stays where their mounts see it until the last lease goes.
func (m *Materializer) takeOutLocked(e *layerEntry) (trash string, leased bool, err error) {
	leased = e.leases > 0
	p, err := m.unindexLocked(e)
	switch {
	case err != nil:
		return "", leased, err
	case leased:
		e.quarantine = p
		return "", true, nil
	}
	return p, false, nil
}

// errNoManifest: the layer has no manifest to compare with.
var errNoManifest = errors.New("no manifest (extracted before manifests were written, or the manifest is damaged)")

// compareManifest walks dir and compares it with the manifest at path. It
// returns the differences (at most maxDifferences, then "and K more") and
// how many files could not be read.
func compareManifest(ctx context.Context, dir, path string) (diffs []string, unreadable int, err error) {
	mf, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, errNoManifest
	}
	if err != nil {
		return nil, 0, err
	}
	defer mf.Close()
	sc := bufio.NewScanner(mf)
	sc.Buffer(make([]byte, 64<<10), 64<<10) // a line holds at most two paths of PATH_MAX
	if !sc.Scan() || sc.Text() != manifestHeader {
		return nil, 0, errNoManifest
	}
	var next *manifestEntry
	var scanErr error
	advance := func() {
		next = nil
		if scanErr != nil || !sc.Scan() {
			if scanErr == nil {
				scanErr = sc.Err()
			}
			return
		}
		e, err := parseManifestLine(sc.Text())
		if err != nil {
			scanErr = err
			return
		}
		next = &e
	}
	advance()

	total := 0
	note := func(format string, args ...any) {
		total++
		if len(diffs) < maxDifferences {
			diffs = append(diffs, fmt.Sprintf(format, args...))
		}
	}
	root, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(root)
	var unreadableN atomic.Int64 // sum runs on walkLayer's workers
	sum := func(dst []byte, rel string, st *syscall.Stat_t) ([]byte, error) {
		buf := contentBufPool.Get().(*[]byte)
		s, err := hashBeneath(root, rel, st, *buf)
		contentBufPool.Put(buf)
		if errors.Is(err, unix.EACCES) {
			unreadableN.Add(1)
			return dst, nil
		}
		return append(dst, s...), err
	}
	err = walkLayer(ctx, dir, sum, nil, func(path string, fields []byte) error {
		for next != nil && walkBefore(next.path, path) {
			note("removed %s", next.path)
			advance()
		}
		if next == nil || next.path != path {
			note("added %s", path)
			return nil
		}
		if want := next.fields; want != string(fields) {
			if what := fieldDiff(want, string(fields)); what != "" {
				note("modified %s: %s", path, what)
			}
		}
		advance()
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	for next != nil {
		note("removed %s", next.path)
		advance()
	}
	if scanErr != nil {
		return nil, 0, fmt.Errorf("%w: %v", errNoManifest, scanErr)
	}
	if total > len(diffs) {
		diffs = append(diffs, fmt.Sprintf("and %d more", total-len(diffs)))
	}
	return diffs, int(unreadableN.Load()), nil
}

// manifestFields names the fields after the path, in order.
var manifestFields = []string{"type", "mode", "owner", "group", "size", "device", "content", "xattrs", "link target"}

// fieldDiff names the fields in which two entries differ ("" when the only
// difference is content this process could not read, "?").
func fieldDiff(want, got string) string {
	w, g := strings.SplitN(want, " ", len(manifestFields)), strings.SplitN(got, " ", len(manifestFields))
	var out []string
	for i, name := range manifestFields {
		var a, b string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			b = g[i]
		}
		if a == b || (name == "content" && b == "?") {
			continue
		}
		out = append(out, name)
	}
	return strings.Join(out, ", ")
}

// walkBefore reports whether path a comes before b in walk order: "." first,
// then by components (a directory before its entries).
func walkBefore(a, b string) bool {
	if a == b {
		return false
	}
	if a == "." {
		return true
	}
	if b == "." {
		return false
	}
	as, bs := strings.Split(a, "/"), strings.Split(b, "/")
	for i := 0; i < len(as) && i < len(bs); i++ {
		if as[i] != bs[i] {
			return as[i] < bs[i]
		}
	}
	return len(as) < len(bs)
}

// hashBeneath returns the hex sha256 of regular file rel beneath root,
// opened without following any symlink and checked to be the inode st
// describes (a swapped path is reported, never read outside the layer).
func hashBeneath(root int, rel string, st *syscall.Stat_t, buf []byte) (string, error) {
	how := unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	}
	var fd int
	var err error
	for i := 0; ; i++ {
		fd, err = unix.Openat2(root, rel, &how)
		if (err == unix.EINTR || err == unix.EAGAIN) && i < 16 {
			continue
		}
		break
	}
	if err != nil {
		return "", &os.PathError{Op: "open", Path: rel, Err: err}
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	var fst unix.Stat_t
	if err := unix.Fstat(fd, &fst); err != nil {
		return "", &os.PathError{Op: "stat", Path: rel, Err: err}
	}
	if fst.Ino != st.Ino || fst.Mode&unix.S_IFMT != unix.S_IFREG {
		return "changed-while-verified", nil
	}
	h := sha256.New()
	// Read into buf: *os.File's WriteTo would copy through a 32 KiB
	// buffer of its own, allocated per file.
	if _, err := io.CopyBuffer(h, struct{ io.Reader }{f}, buf); err != nil {
		return "", &os.PathError{Op: "read", Path: rel, Err: err}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
