package ext4

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/materialize/internal/layerio"
)

// ErrInvalidLayer is wrapped by every error about a layer's tar content that
// Flatten refuses (paths escaping the root, hard links to nothing,
// unreadable tar).
var ErrInvalidLayer = errors.New("invalid layer content")

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

// TarOpener returns the uncompressed tar stream of one layer. The caller
// closes the reader.
type TarOpener func(ctx context.Context) (io.ReadCloser, error)

// FlattenStats counts what one Flatten call did.
type FlattenStats struct {
	Entries       int64 // entries written to the flattened stream
	Synthesized   int64 // missing parent directories added (0755 root:root)
	LinksToFiles  int64 // hard links whose target was shadowed, written as regular files
	SpooledBytes  int64 // bytes of shadowed files spooled to disk for possible hard links
	ShadowedBytes int64 // bytes of file content hidden by upper layers
}

// Flatten writes to w ONE tar stream holding the merged view of layers (the
// tree an overlay mount of them shows): layers are given bottom-first and
// read top-down, each exactly once and in a single streaming pass. The output
// is what an ext4 writer needs:
//
//   - every path appears at most once; for every path the topmost layer's
//     entry wins (metadata of directories too);
//   - OCI whiteouts (".wh.NAME") and opaque markers (".wh..wh..opq") are
//     applied and never written; a non-directory in an upper layer hides a
//     lower directory and everything under it, and a directory in an upper
//     layer over a lower non-directory hides what lay below that;
//   - parents precede children: a directory with no entry of its own in any
//     layer is written once, before its first child, as 0755 root:root with
//     zero times; if a lower layer later supplies the directory's entry, it is
//     written too and its metadata replaces the synthesized one;
//   - a hard link whose target is visible stays a hard link; one whose target
//     an upper layer shadowed becomes a regular file with the target's
//     content and metadata (further links to the same target link to it);
//   - PAX global headers and tar types other than regular file, directory,
//     symlink, hard link, character/block device and FIFO are dropped;
//     sparse entries (GNU or PAX) fail with ErrInvalidLayer, since reading
//     them would expand holes into zeros without bound.
//
// Names are cleaned and made relative; a name or hard-link target that
// escapes the root ("..") fails with ErrInvalidLayer. Symlink targets are
// kept verbatim (they resolve inside the image's root when used); one over
// MaxSymlinkTarget bytes fails with ErrInvalidLayer. Extended attributes
// are kept, except overlayfs's own (trusted.overlay.*, user.overlay.*),
// which the overlay applier does not let a layer set either.
//
// Memory stays bounded: Flatten keeps one small record per path and no file
// content. A hard link comes after its target in the same layer, and by
// then the target's bytes have streamed past; so that a link to a shadowed
// target can still become a regular file, Flatten spools the content of
// every shadowed regular file of the layer being read to one temporary file
// in spoolDir (rewound for each layer, removed before Flatten returns).
// Only shadowed bytes go there, usually a small part of an image; the
// alternatives were unbounded memory or reading (and decompressing) a layer
// twice.
//
// Flatten does not close w. On error, w holds a partial stream.
func Flatten(ctx context.Context, layers []TarOpener, w io.Writer, spoolDir string) (FlattenStats, error) {
	return FlattenLimited(ctx, layers, w, spoolDir, FlattenLimits{})
}

// FlattenLimits bound the work of one Flatten call over all its layers
// (each layer's own decompressed size is bounded by its TarOpener). Zero
// fields mean no bound. Exceeding one fails with an error wrapping
// layerio.ErrBudgetExceeded (and so layerio.ErrLimitExceeded): a property
// of the image, not of one layer.
type FlattenLimits struct {
	// MaxEntries bounds the tar entries read, all layers together
	// (whiteouts and shadowed entries included).
	MaxEntries int64
	// MaxBytes bounds the bytes of file content read, all layers
	// together (shadowed content included: it is spooled to disk).
	MaxBytes int64
}

// MaxSymlinkTarget is the longest symlink target an image may hold (Linux's
// PATH_MAX less the terminating NUL); a longer one fails with
// ErrInvalidLayer, as the kernel and e2fsck refuse it.
const MaxSymlinkTarget = 4095

// FlattenLimited is Flatten with limits on the whole image's work.
func FlattenLimited(ctx context.Context, layers []TarOpener, w io.Writer, spoolDir string, lim FlattenLimits) (FlattenStats, error) {
	f := &flattener{
		tw:       tar.NewWriter(w),
		paths:    make(map[string]*pathState),
		spoolDir: spoolDir,
		lim:      lim,
	}
	defer func() {
		if f.spool != nil {
			f.spool.Close()
			os.Remove(f.spool.Name())
		}
	}()

	for i := len(layers) - 1; i >= 0; i-- {
		if err := ctx.Err(); err != nil {
			return f.stats, err
		}
		if err := f.layer(ctx, i, layers[i]); err != nil {
			return f.stats, err
		}
	}
	if err := f.tw.Close(); err != nil {
		return f.stats, err
	}
	return f.stats, nil
}

type stateKind uint8

const (
	kindDir         stateKind = iota + 1 // a directory entry was written
	kindSynthesized                      // a directory was written for lack of an entry of its own
	kindNonDir                           // a non-directory was written
	kindWhiteout                         // an upper layer deleted the path
)

type pathState struct {
	kind stateKind
	// opaqueBelow: layers with an index below this see nothing under the
	// path (an opaque marker, or a directory over a non-directory). 0 = none.
	opaqueBelow int
}

// layerLink records, for one layer, what a hard link to a name resolves to.
type layerLink struct {
	emitted string      // the visible name holding the inode; "" if shadowed
	hdr     *tar.Header // shadowed target: its header (metadata for the copy)
	off     int64       // shadowed target: offset of its content in the spool
}

type flattener struct {
	tw       *tar.Writer
	paths    map[string]*pathState
	spoolDir string
	spool    *os.File // created when first needed
	stats    FlattenStats
	buf      []byte
	lim      FlattenLimits
	entries  int64 // tar entries read, all layers
	bytes    int64 // file content read, all layers
}

func (f *flattener) layer(ctx context.Context, idx int, open TarOpener) (err error) {
	rc, err := open(ctx)
	if err != nil {
		return fmt.Errorf("ext4: flatten: open layer %d: %w", idx, err)
	}
	defer func() {
		// An entry refused for its content may come from wrong bytes (a
		// rotten cached copy) that the blob's digest check, at its end,
		// would tell: settle the stream before it is closed.
		if s, ok := rc.(interface{ settle(error) error }); ok && err != nil && ctx.Err() == nil && layerio.MaySettle(err) {
			err = s.settle(err)
		}
		rc.Close()
	}()
	if f.spool != nil {
		if _, err := f.spool.Seek(0, io.SeekStart); err != nil {
			return err
		}
	}
	var spoolEnd int64
	links := make(map[string]*layerLink)
	opaque := make(map[string]bool) // applied after the layer: hides lower layers only

	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, tar.ErrHeader) {
				// Corrupt bytes often break the tar before the verifying
				// reader reaches EOF: read on to report a mismatch as one.
				if _, derr := io.Copy(io.Discard, rc); errors.Is(derr, blob.ErrMismatch) {
					return fmt.Errorf("ext4: flatten: layer %d: %w", idx, derr)
				}
				return fmt.Errorf("ext4: flatten: layer %d: %w: reading tar: %v", idx, ErrInvalidLayer, err)
			}
			// The layer reader's own error (a digest mismatch, a limit, a
			// cancelled context, I/O) stays testable with errors.Is.
			return fmt.Errorf("ext4: flatten: layer %d: %w", idx, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := f.count(idx, hdr); err != nil {
			return err
		}
		name, ok := cleanName(hdr.Name)
		if !ok {
			return fmt.Errorf("ext4: flatten: layer %d: %w: path %q escapes the root", idx, ErrInvalidLayer, hdr.Name)
		}
		if isSparse(hdr) {
			// archive/tar expands sparse entries to their full logical size:
			// a few bytes of layer could demand gigabytes of zeros. OCI
			// layer writers never produce them.
			return fmt.Errorf("ext4: flatten: layer %d: %w: %q is a sparse tar entry (not supported)", idx, ErrInvalidLayer, hdr.Name)
		}
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		default:
			continue // PAX global header, GNU volume label, ...: not files
		}
		if hdr.Typeflag == tar.TypeSymlink && len(hdr.Linkname) > MaxSymlinkTarget {
			return fmt.Errorf("ext4: flatten: layer %d: %w: symlink %q has a target of %d bytes (at most %d)", idx, ErrInvalidLayer, name, len(hdr.Linkname), MaxSymlinkTarget)
		}
		dir, base := path.Split(name)
		dir = strings.TrimSuffix(dir, "/")
		if dir == "" {
			dir = "."
		}

		if base == opaqueMarker {
			if !f.hidden(dir, idx) {
				opaque[dir] = true
			}
			continue
		}
		if strings.HasPrefix(base, whiteoutPrefix) {
			if base == whiteoutPrefix {
				continue // ".wh." alone names nothing
			}
			target := path.Join(dir, base[len(whiteoutPrefix):])
			st := f.paths[target]
			if st != nil && (st.kind == kindDir || st.kind == kindSynthesized) {
				// An upper layer recreated the directory: nothing below
				// this layer shows through it.
				st.opaqueBelow = max(st.opaqueBelow, idx)
				continue
			}
			if (st == nil || st.kind == 0) && !f.hidden(target, idx) {
				if st == nil {
					f.paths[target] = &pathState{kind: kindWhiteout}
				} else {
					st.kind = kindWhiteout
				}
			}
			continue
		}

		isDir := hdr.Typeflag == tar.TypeDir
		visible := true
		if st := f.paths[name]; st != nil && st.kind != 0 {
			switch {
			case st.kind == kindSynthesized && isDir:
				// The first real entry for a directory we had to invent.
			case st.kind == kindSynthesized || st.kind == kindDir:
				if !isDir {
					// A directory above a non-directory hides what lies below.
					st.opaqueBelow = max(st.opaqueBelow, idx)
				}
				visible = false
			default:
				visible = false
			}
		}
		if visible && f.hidden(name, idx) {
			visible = false
		}

		if hdr.Typeflag == tar.TypeLink {
			if err := f.link(idx, name, hdr, visible, links); err != nil {
				return err
			}
			continue
		}

		if !visible {
			if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
				f.stats.ShadowedBytes += hdr.Size
				// Spool: a later hard link in this layer may need the content.
				if f.spool == nil {
					sp, err := os.CreateTemp(f.spoolDir, "flatten-spool-*")
					if err != nil {
						return fmt.Errorf("ext4: flatten: spool file: %w", err)
					}
					f.spool = sp
				}
				n, err := io.CopyBuffer(f.spool, io.LimitReader(tr, hdr.Size), f.copyBuf())
				if err != nil {
					return layerErr(idx, name, err)
				}
				if n != hdr.Size {
					return fmt.Errorf("ext4: flatten: layer %d: %w: %q truncated", idx, ErrInvalidLayer, name)
				}
				links[name] = &layerLink{hdr: hdr, off: spoolEnd}
				spoolEnd += n
				f.stats.SpooledBytes += n
			} else if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeSymlink ||
				hdr.Typeflag == tar.TypeChar || hdr.Typeflag == tar.TypeBlock || hdr.Typeflag == tar.TypeFifo {
				links[name] = &layerLink{hdr: hdr, off: -1}
			}
			continue
		}

		if err := f.parents(name); err != nil {
			return err
		}
		out := outHeader(hdr, name)
		if err := f.tw.WriteHeader(out); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
			n, err := io.CopyBuffer(f.tw, io.LimitReader(tr, hdr.Size), f.copyBuf())
			if err != nil {
				return layerErr(idx, name, err)
			}
			if n != hdr.Size {
				return fmt.Errorf("ext4: flatten: layer %d: %w: %q truncated", idx, ErrInvalidLayer, name)
			}
		}
		f.stats.Entries++
		kind := kindNonDir
		if isDir {
			kind = kindDir
		}
		if st, ok := f.paths[name]; ok {
			st.kind = kind
		} else {
			f.paths[name] = &pathState{kind: kind}
		}
		if !isDir {
			links[name] = &layerLink{emitted: name}
		}
	}
	// Drain trailing bytes so a verifying reader below reaches EOF and checks
	// the digest.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return fmt.Errorf("ext4: flatten: layer %d: %w", idx, err)
	}
	for d := range opaque {
		st, ok := f.paths[d]
		if !ok {
			// The directory itself comes from a lower layer; it stays
			// visible (its entry may still appear), its lower content not.
			st = &pathState{}
			f.paths[d] = st
		}
		st.opaqueBelow = max(st.opaqueBelow, idx)
	}
	return nil
}

// count adds hdr to the whole image's work and checks the limits.
func (f *flattener) count(idx int, hdr *tar.Header) error {
	f.entries++
	if f.lim.MaxEntries > 0 && f.entries > f.lim.MaxEntries {
		return fmt.Errorf("ext4: flatten: layer %d: %w: more than %d tar entries in the image", idx, layerio.ErrBudgetExceeded, f.lim.MaxEntries)
	}
	if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
		f.bytes += hdr.Size
		if f.lim.MaxBytes > 0 && (f.bytes > f.lim.MaxBytes || f.bytes < 0) {
			return fmt.Errorf("ext4: flatten: layer %d: %w: more than %d bytes of file content in the image", idx, layerio.ErrBudgetExceeded, f.lim.MaxBytes)
		}
	}
	return nil
}

// link handles a hard link entry name -> hdr.Linkname within layer idx.
func (f *flattener) link(idx int, name string, hdr *tar.Header, visible bool, links map[string]*layerLink) error {
	target, ok := cleanName(hdr.Linkname)
	if !ok || target == "." {
		return fmt.Errorf("ext4: flatten: layer %d: %w: hard link %q -> %q escapes the root", idx, ErrInvalidLayer, name, hdr.Linkname)
	}
	tl, ok := links[target]
	if !ok {
		return fmt.Errorf("ext4: flatten: layer %d: %w: hard link %q -> %q: target is not an earlier non-directory entry of the same layer", idx, ErrInvalidLayer, name, hdr.Linkname)
	}
	if !visible {
		links[name] = tl // a later link to this name means the same inode
		return nil
	}
	if err := f.parents(name); err != nil {
		return err
	}
	if tl.emitted != "" {
		out := outHeader(hdr, name)
		out.Linkname = tl.emitted
		if err := f.tw.WriteHeader(out); err != nil {
			return err
		}
	} else {
		// The target is shadowed: this name now holds the inode, as a
		// regular file (or whatever the target was) with its content.
		out := outHeader(tl.hdr, name)
		if err := f.tw.WriteHeader(out); err != nil {
			return err
		}
		if tl.hdr.Typeflag == tar.TypeReg && tl.hdr.Size > 0 {
			sr := io.NewSectionReader(f.spool, tl.off, tl.hdr.Size)
			if _, err := io.CopyBuffer(f.tw, sr, f.copyBuf()); err != nil {
				return fmt.Errorf("ext4: flatten: copy spooled %q: %w", tl.hdr.Name, err)
			}
		}
		tl.emitted = name
		f.stats.LinksToFiles++
	}
	f.stats.Entries++
	if st, ok := f.paths[name]; ok {
		st.kind = kindNonDir
	} else {
		f.paths[name] = &pathState{kind: kindNonDir}
	}
	links[name] = tl
	return nil
}

// hidden reports whether an entry of layer idx at name is hidden by an
// ancestor: deleted, replaced by a non-directory, or made opaque above idx.
func (f *flattener) hidden(name string, idx int) bool {
	for name != "." {
		name = parentDir(name)
		st, ok := f.paths[name]
		if !ok {
			continue
		}
		if st.kind == kindWhiteout || st.kind == kindNonDir {
			return true
		}
		if st.opaqueBelow > idx {
			return true
		}
	}
	return false
}

// parents writes synthesized directories for every ancestor of name that
// has not been written yet, outermost first.
func (f *flattener) parents(name string) error {
	var missing []string
	for p := parentDir(name); p != "."; p = parentDir(p) {
		st, ok := f.paths[p]
		if ok && (st.kind == kindDir || st.kind == kindSynthesized) {
			break
		}
		missing = append(missing, p)
	}
	for i := len(missing) - 1; i >= 0; i-- {
		p := missing[i]
		if err := f.tw.WriteHeader(&tar.Header{
			Typeflag: tar.TypeDir,
			Name:     p + "/",
			Mode:     0o755,
			ModTime:  time.Unix(0, 0),
			Format:   tar.FormatPAX,
		}); err != nil {
			return err
		}
		f.stats.Synthesized++
		if st, ok := f.paths[p]; ok {
			st.kind = kindSynthesized
		} else {
			f.paths[p] = &pathState{kind: kindSynthesized}
		}
	}
	return nil
}

func (f *flattener) copyBuf() []byte {
	if f.buf == nil {
		f.buf = make([]byte, 256<<10)
	}
	return f.buf
}

// outHeader is the header written for an entry of the merged view.
func outHeader(h *tar.Header, name string) *tar.Header {
	out := &tar.Header{
		Typeflag:   h.Typeflag,
		Name:       name,
		Linkname:   h.Linkname,
		Size:       h.Size,
		Mode:       h.Mode & 0o7777,
		Uid:        h.Uid,
		Gid:        h.Gid,
		ModTime:    h.ModTime,
		AccessTime: h.AccessTime,
		ChangeTime: h.ChangeTime,
		Devmajor:   h.Devmajor,
		Devminor:   h.Devminor,
		Format:     tar.FormatPAX,
	}
	if h.Typeflag == tar.TypeDir {
		out.Name += "/"
	}
	if h.Typeflag != tar.TypeReg {
		out.Size = 0
	}
	for k, v := range h.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if strings.HasPrefix(name, "trusted.overlay.") || strings.HasPrefix(name, "user.overlay.") {
				// overlayfs's own markers (opaque, redirect, metacopy): a
				// layer must not forge them, as the overlay applier does
				// not let it either.
				continue
			}
			if out.PAXRecords == nil {
				out.PAXRecords = make(map[string]string)
			}
			out.PAXRecords[k] = v
		}
	}
	return out
}

// isSparse reports whether hdr is a GNU or PAX sparse file.
func isSparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// cleanName makes a tar name relative and clean; ok is false when it
// escapes the root.
func cleanName(n string) (string, bool) {
	c := path.Clean("/" + n)
	if strings.Contains(n, "\x00") {
		return "", false
	}
	// path.Clean("/"+n) can never go above "/", so look at the raw name.
	raw := path.Clean(n)
	if raw == ".." || strings.HasPrefix(raw, "../") {
		return "", false
	}
	if c == "/" {
		return ".", true
	}
	return c[1:], true
}

// layerErr wraps an error met while copying an entry's content: a tar cut
// short is invalid content, anything else (the reader's own error, a write
// error) is passed on.
func layerErr(idx int, name string, err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("ext4: flatten: layer %d: %w: %q truncated", idx, ErrInvalidLayer, name)
	}
	return fmt.Errorf("ext4: flatten: layer %d: %q: %w", idx, name, err)
}

func parentDir(p string) string {
	d := path.Dir(p)
	if d == "/" || d == "" {
		return "."
	}
	return d
}
