package layerio

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/strata-oci/strata/internal/trunc"
)

// ErrInvalidLayer is wrapped by every error about a layer's tar content
// that a materializer refuses: a tar stream that does not parse, a NUL in a
// name, an unsupported entry type, an invalid whiteout, a hard link to
// anything but an earlier non-directory of the same layer, a non-directory
// as the layer root, a symlink target that is empty or over
// MaxSymlinkTarget bytes, an owner out of range. Both materializers return
// this one value.
var ErrInvalidLayer = errors.New("invalid layer content")

// MaxSymlinkTarget is the longest symlink target a layer may hold (Linux's
// PATH_MAX less the terminating NUL); a longer one is ErrInvalidLayer.
const MaxSymlinkTarget = 4095

// OCI whiteout markers.
const (
	WhiteoutPrefix = ".wh."
	OpaqueMarker   = ".wh..wh..opq"
)

// Kind is what an Entry asks its consumer to make.
type Kind uint8

// The kinds of Entry.
const (
	KindFile     Kind = iota + 1 // a regular file; its content is read from Entries
	KindDir                      // a directory (Implicit: one the layer has no header for)
	KindSymlink                  // a symlink to Link, verbatim
	KindLink                     // a hard link to Link, an earlier KindFile/KindSymlink/device/FIFO/KindLink name of the layer
	KindChar                     // a character device
	KindBlock                    // a block device
	KindFIFO                     // a FIFO
	KindWhiteout                 // Name is deleted from the layers below; the layer has no entry of that name
	KindOpaque                   // Name, a directory of this layer ("" is the root), hides the layers below's content of it
)

func (k Kind) String() string {
	switch k {
	case KindFile:
		return "regular file"
	case KindDir:
		return "directory"
	case KindSymlink:
		return "symlink"
	case KindLink:
		return "hard link"
	case KindChar:
		return "character device"
	case KindBlock:
		return "block device"
	case KindFIFO:
		return "fifo"
	case KindWhiteout:
		return "whiteout"
	case KindOpaque:
		return "opaque marker"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Entry is one decision of Entries. It is valid until the next call of
// Next.
type Entry struct {
	Kind Kind
	// Name is clean and relative to the layer root, "" for the root itself
	// (only KindDir and KindOpaque): no "." or ".." element, no leading or
	// trailing "/", no NUL.
	Name string
	// Link is a symlink's target as the layer wrote it (not empty, no NUL,
	// at most MaxSymlinkTarget bytes), or a hard link's target, clean like
	// Name.
	Link string
	// Implicit marks a KindDir that no header of the layer declares: a
	// parent the layer's entries need. Its Header is 0755 root:root with
	// zero times.
	Implicit bool
	// Header is the tar header for metadata (mode, owner, times,
	// PAXRecords, device numbers, and Size for a KindFile: its logical size,
	// holes of a sparse entry included). For KindWhiteout it is the
	// marker's header; for KindOpaque it is nil.
	Header *tar.Header
}

// EntryLimits bound one layer's entries. Exceeding one is an error
// wrapping ErrLimitExceeded. Zero or negative fields mean no bound.
type EntryLimits struct {
	// MaxEntries bounds the tar headers read (skipped ones included).
	MaxEntries int64
	// MaxBytes bounds the logical size of the regular files handed out
	// (a sparse entry counts with its holes, which archive/tar expands).
	MaxBytes int64
}

// EntryStats counts what Entries read.
type EntryStats struct {
	Headers int64 // tar headers read
	Dropped int64 // entries ignored: duplicates, redundant whiteouts, PAX global headers
	Bytes   int64 // logical size of the regular files handed out
}

// Entries reads one layer's tar stream and makes every decision about its
// entries, once, for both materializers: an overlay applier that writes
// each entry as it comes and a flattener that merges layers. A consumer
// that makes what each Entry says builds the layer's tree; the rules
// (OCI image-spec layer semantics, and containerd's or
// go-containerregistry's where the spec says nothing) are:
//
//   - Names are cleaned as if the layer root were "/": "./a//b/" is "a/b",
//     and ".." never climbs above the root ("../etc/passwd" is
//     "etc/passwd"), as containerd's applier does. A name with a NUL byte
//     is ErrInvalidLayer. Hard-link targets are cleaned the same way.
//   - The first entry of a name wins; a later entry of the same name in the
//     same layer is dropped (as go-containerregistry's mutate.Extract does;
//     tar extraction would keep the last, but a flattener that streams
//     cannot take back what it wrote, and layer writers do not write a
//     name twice). A directory is the exception that streaming allows: a
//     later directory header of a directory gives it its metadata (its
//     content stays). A parent directory that an earlier entry needed
//     (Implicit) counts as that name's first entry, so a later directory
//     header for it gives it its metadata, while a later non-directory
//     there is dropped.
//   - An entry under a name whose first entry is not a directory (a
//     symlink, a file) is ErrInvalidLayer: nothing is ever written through
//     a symlink (containerd would follow it inside the root; an overlay
//     layer extracted on its own cannot, as the symlink may come from a
//     layer below), and a non-directory is never replaced by a directory
//     within one layer. Every entry's parent directories come first, as
//     directory entries of the layer or as Implicit ones.
//   - Whiteouts (".wh.NAME") and opaque markers (".wh..wh..opq") apply to
//     the layers below only (OCI). They are handed out after all other
//     entries, resolved against the layer's own entries: a whiteout of a
//     name the layer has no entry for is a KindWhiteout; a whiteout of a
//     directory of the layer, or an opaque marker in it, is a KindOpaque;
//     a whiteout of a non-directory of the layer is dropped (the entry
//     already hides what lies below). An opaque marker at the root is a
//     KindOpaque with Name "": the layers below are hidden entirely. The
//     markers' parents are directories of the layer (Implicit if need
//     be). ".wh." alone, ".wh..", ".wh...", and any other ".wh..wh."
//     name are ErrInvalidLayer.
//   - Hard links must name an earlier non-directory entry of the same
//     layer (what remains visible is the consumer's business).
//   - Sparse entries (GNU or PAX) are regular files of their full logical
//     size; archive/tar expands the holes, which count against
//     EntryLimits.MaxBytes (so a bomb fails early).
//   - PAX global headers are skipped; tar types other than file,
//     directory, symlink, hard link, devices and FIFO are ErrInvalidLayer,
//     as is a root that is not a directory, an owner outside
//     0..4294967294, a symlink target that is empty or over
//     MaxSymlinkTarget bytes.
//
// Errors from Next and Read wrap ErrInvalidLayer (with the entry's name),
// ErrLimitExceeded, or are the underlying reader's own (a digest
// mismatch, a cancelled context). Next returns io.EOF only after the
// underlying reader returned io.EOF (the whole blob was read, so a
// verifying reader below has checked it). Entries keeps one small record
// per name of the layer (and the pending markers), no content. It is for
// one goroutine.
type Entries struct {
	tr    *tar.Reader
	r     io.Reader
	lim   EntryLimits
	stats EntryStats

	names map[string]nameState
	// pending holds the whiteouts and opaque markers, handed out at the
	// end, in the order they were met.
	pending []pendingMark
	// queue[qhead:] holds entries to hand out before reading on
	// (implicit parents, then the entry that needed them).
	queue []Entry
	qhead int
	cur   Entry
	// lastDir is a directory of the layer whose ancestors are all known to
	// be directories: entries of one directory come together.
	lastDir string
	inFile  bool
	done    bool
	marks   int // pending marks handed out
}

type nameState uint8

const (
	stateImplicit nameState = 1 << iota // a directory needed by an entry, without a header yet
	stateDir                            // a directory header
	stateNonDir                         // a non-directory
	stateWhiteout                       // a whiteout and no entry
	stateOpaque                         // (with a directory state) hides the layers below
)

func (s nameState) isDir() bool { return s&(stateImplicit|stateDir) != 0 }

type pendingMark struct {
	name string
	hdr  *tar.Header
}

// NewEntries returns an Entries reading the tar stream r (a layer's
// decompressed stream) bounded by lim.
func NewEntries(r io.Reader, lim EntryLimits) *Entries {
	return &Entries{tr: tar.NewReader(r), r: r, lim: lim, names: map[string]nameState{}, lastDir: "\x00"}
}

// Stats returns the counts so far.
func (e *Entries) Stats() EntryStats { return e.stats }

// Read reads the content of the current KindFile entry (io.EOF at its
// end). A tar stream cut short is ErrInvalidLayer.
func (e *Entries) Read(p []byte) (int, error) {
	if !e.inFile {
		return 0, io.EOF
	}
	n, err := e.tr.Read(p)
	if err == io.ErrUnexpectedEOF {
		err = fmt.Errorf("%w: %q: tar stream cut short", ErrInvalidLayer, trunc.String(e.cur.Name, 200))
	}
	return n, err
}

// Next returns the next entry, or io.EOF after the last.
func (e *Entries) Next() (*Entry, error) {
	e.inFile = false
	for {
		if e.qhead < len(e.queue) {
			e.cur = e.queue[e.qhead]
			if e.qhead++; e.qhead == len(e.queue) {
				clear(e.queue) // drop the headers
				e.queue, e.qhead = e.queue[:0], 0
			}
			e.inFile = e.cur.Kind == KindFile
			return &e.cur, nil
		}
		if e.done {
			return e.nextMark()
		}
		h, err := e.tr.Next()
		if err == io.EOF {
			// Read what follows the end-of-archive marker so the blob is
			// verified to its end.
			if _, err := io.Copy(io.Discard, e.r); err != nil {
				return nil, err
			}
			e.done = true
			continue
		}
		if err != nil {
			if err == io.ErrUnexpectedEOF || errors.Is(err, tar.ErrHeader) || errors.Is(err, tar.ErrFieldTooLong) ||
				errors.Is(err, tar.ErrInsecurePath) {
				return nil, fmt.Errorf("%w: reading tar: %v", ErrInvalidLayer, err)
			}
			return nil, err
		}
		e.stats.Headers++
		if e.lim.MaxEntries > 0 && e.stats.Headers > e.lim.MaxEntries {
			return nil, fmt.Errorf("%w: more than %d entries", ErrLimitExceeded, e.lim.MaxEntries)
		}
		if err := e.header(h); err != nil {
			return nil, fmt.Errorf("entry %q: %w", trunc.String(h.Name, 200), err)
		}
	}
}

// nextMark hands out the pending whiteouts and opaque markers.
func (e *Entries) nextMark() (*Entry, error) {
	for e.marks < len(e.pending) {
		m := e.pending[e.marks]
		e.marks++
		st := e.names[m.name]
		switch {
		case st&stateOpaque != 0 && (m.name == "" || st.isDir()):
			e.names[m.name] = st &^ stateOpaque // once
			e.cur = Entry{Kind: KindOpaque, Name: m.name}
			return &e.cur, nil
		case st == stateWhiteout:
			e.names[m.name] = 0 // once
			e.cur = Entry{Kind: KindWhiteout, Name: m.name, Header: m.hdr}
			return &e.cur, nil
		}
	}
	return nil, io.EOF
}

// header decides what h is and queues it (with the implicit parents it
// needs), or drops it.
func (e *Entries) header(h *tar.Header) error {
	var kind Kind
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		kind = KindFile
	case tar.TypeDir:
		kind = KindDir
	case tar.TypeSymlink:
		kind = KindSymlink
	case tar.TypeLink:
		kind = KindLink
	case tar.TypeChar:
		kind = KindChar
	case tar.TypeBlock:
		kind = KindBlock
	case tar.TypeFifo:
		kind = KindFIFO
	case tar.TypeXGlobalHeader:
		e.stats.Dropped++
		return nil // carries no file (containerd ignores it too)
	default:
		return fmt.Errorf("%w: unsupported entry type %q", ErrInvalidLayer, h.Typeflag)
	}
	name, err := CleanName(h.Name)
	if err != nil {
		return err
	}
	dir, base := splitName(name)
	if strings.HasPrefix(base, WhiteoutPrefix) {
		return e.marker(dir, base, h)
	}
	if name == "" {
		if kind != KindDir {
			return fmt.Errorf("%w: the layer root is a %s", ErrInvalidLayer, kind)
		}
		if err := checkOwner(h); err != nil {
			return err
		}
		e.names[""] |= stateDir
		e.queue = append(e.queue, Entry{Kind: KindDir, Header: h})
		return nil
	}
	if err := e.parents(dir); err != nil {
		return err
	}
	st := e.names[name]
	switch {
	case st.isDir() && kind == KindDir:
		// A directory again: its last header gives its metadata.
	case st&(stateImplicit|stateDir|stateNonDir) != 0:
		e.stats.Dropped++ // the first entry of a name wins
		return nil
	}
	if err := checkOwner(h); err != nil {
		return err
	}
	ent := Entry{Kind: kind, Name: name, Header: h}
	switch kind {
	case KindFile:
		if h.Size < 0 || e.lim.MaxBytes > 0 && h.Size > e.lim.MaxBytes-e.stats.Bytes {
			return fmt.Errorf("%w: file content over %d bytes", ErrLimitExceeded, e.lim.MaxBytes)
		}
		e.stats.Bytes += h.Size
	case KindSymlink:
		switch {
		case h.Linkname == "":
			return fmt.Errorf("%w: empty symlink target", ErrInvalidLayer)
		case strings.IndexByte(h.Linkname, 0) >= 0:
			return fmt.Errorf("%w: NUL byte in symlink target", ErrInvalidLayer)
		case len(h.Linkname) > MaxSymlinkTarget:
			return fmt.Errorf("%w: symlink target of %d bytes (at most %d)", ErrInvalidLayer, len(h.Linkname), MaxSymlinkTarget)
		}
		ent.Link = h.Linkname
	case KindLink:
		target, err := CleanName(h.Linkname)
		if err != nil {
			return err
		}
		if target == "" || e.names[target]&stateNonDir == 0 {
			return fmt.Errorf("%w: hard link to %q, which is not an earlier non-directory entry of the layer", ErrInvalidLayer, trunc.String(h.Linkname, 200))
		}
		ent.Link = target
	}
	if kind == KindDir {
		// A whiteout of this layer before the directory: nothing below
		// shows through it.
		if st&stateWhiteout != 0 {
			st = stateOpaque
		}
		e.names[name] = st&stateOpaque | stateDir
	} else {
		e.names[name] = stateNonDir
	}
	e.queue = append(e.queue, ent)
	return nil
}

// parents makes sure every ancestor of an entry in dir is a directory of
// the layer, queueing Implicit directory entries for those the layer has
// not named yet (outermost first). An ancestor that is a non-directory of
// the layer is ErrInvalidLayer: nothing is written through a symlink.
func (e *Entries) parents(dir string) error {
	if dir == "" || dir == e.lastDir {
		return nil
	}
	// Walk up to the nearest directory the layer already has.
	var missing []string
	d := dir
	for d != "" {
		st := e.names[d]
		if st.isDir() {
			break
		}
		if st&stateNonDir != 0 {
			return fmt.Errorf("%w: parent %q is a non-directory of the layer (entries are not written through it)", ErrInvalidLayer, trunc.String(d, 200))
		}
		missing = append(missing, d)
		d, _ = splitName(d)
	}
	for i := len(missing) - 1; i >= 0; i-- {
		p := missing[i]
		st := e.names[p]
		if st&stateWhiteout != 0 {
			// A whiteout of this layer before: the directory is new here,
			// nothing below shows through it.
			st = stateOpaque
		}
		e.names[p] = st&stateOpaque | stateImplicit
		e.queue = append(e.queue, Entry{Kind: KindDir, Name: p, Implicit: true, Header: implicitHeader(p)})
	}
	e.lastDir = dir
	return nil
}

func implicitHeader(name string) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
}

// marker handles ".wh.*" entries in directory dir.
func (e *Entries) marker(dir, base string, h *tar.Header) error {
	if base == OpaqueMarker {
		if dir == "" {
			if e.names[""]&stateOpaque == 0 {
				e.names[""] |= stateOpaque
				e.pending = append(e.pending, pendingMark{name: "", hdr: h})
			}
			return nil
		}
		// The marker's directory is a directory of this layer.
		pdir, _ := splitName(dir)
		if err := e.parents(pdir); err != nil {
			return err
		}
		st := e.names[dir]
		if st&stateNonDir != 0 {
			return fmt.Errorf("%w: opaque marker in %q, a non-directory of the layer", ErrInvalidLayer, trunc.String(dir, 200))
		}
		if !st.isDir() {
			st = stateImplicit
			e.queue = append(e.queue, Entry{Kind: KindDir, Name: dir, Implicit: true, Header: implicitHeader(dir)})
		}
		if st&stateOpaque == 0 {
			e.pending = append(e.pending, pendingMark{name: dir, hdr: h})
		}
		e.names[dir] = st | stateOpaque
		return nil
	}
	target := base[len(WhiteoutPrefix):]
	if target == "" || target == "." || target == ".." || strings.HasPrefix(target, WhiteoutPrefix) {
		return fmt.Errorf("%w: invalid whiteout %q", ErrInvalidLayer, trunc.String(base, 200))
	}
	if err := e.parents(dir); err != nil {
		return err
	}
	name := target
	if dir != "" {
		name = dir + "/" + target
	}
	st := e.names[name]
	switch {
	case st == 0:
		e.names[name] = stateWhiteout
		e.pending = append(e.pending, pendingMark{name: name, hdr: h})
	case st.isDir() && st&stateOpaque == 0:
		e.names[name] = st | stateOpaque
		e.pending = append(e.pending, pendingMark{name: name, hdr: h})
	default:
		e.stats.Dropped++ // a duplicate, or a non-directory of the layer already hides it
	}
	return nil
}

func checkOwner(h *tar.Header) error {
	if h.Uid < 0 || h.Gid < 0 || h.Uid > 1<<32-2 || h.Gid > 1<<32-2 {
		return fmt.Errorf("%w: invalid owner %d:%d", ErrInvalidLayer, h.Uid, h.Gid)
	}
	return nil
}

// CleanName turns a tar name into a clean path relative to the layer root
// ("" for the root), as if the root were "/": ".." cannot climb above it.
// A name with a NUL byte is ErrInvalidLayer.
func CleanName(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("%w: NUL byte in name", ErrInvalidLayer)
	}
	if isClean(name) {
		return strings.TrimSuffix(name, "/"), nil
	}
	return strings.TrimPrefix(path.Clean("/"+name), "/"), nil
}

// isClean reports whether name, less one trailing "/", is already a clean
// relative path (the common case, which then costs no allocation).
func isClean(name string) bool {
	name = strings.TrimSuffix(name, "/")
	if name == "" || name[0] == '/' {
		return false
	}
	start := 0
	for i := 0; i <= len(name); i++ {
		if i < len(name) && name[i] != '/' {
			continue
		}
		switch name[start:i] {
		case "", ".", "..":
			return false
		}
		start = i + 1
	}
	return true
}

func splitName(name string) (dir, base string) {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return "", name
	}
	return name[:i], name[i+1:]
}
