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
// Flatten refuses (see layerio.Entries: hard links to nothing, entries
// under a non-directory, unreadable tar). It is layerio.ErrInvalidLayer,
// the same value as overlay.ErrInvalidLayer.
var ErrInvalidLayer = layerio.ErrInvalidLayer

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
// tree an overlay mount of the overlay materializer's layer directories
// shows): layers are given bottom-first and read top-down, each exactly
// once and in a single streaming pass. Each layer's entries are what
// layerio.Entries decides (clean names, ".." clamped at the root, the
// first entry of a name wins, parents before children with implicit ones
// 0755 root:root, nothing under a non-directory, whiteouts resolved
// against the layer's own entries); Flatten merges them as overlayfs
// does:
//
//   - every path appears once (a directory's header may appear again,
//     later, with the metadata of the same layer's later header); the
//     topmost layer holding a path decides what it is, and for a
//     directory its metadata, be it a header of that layer or an implicit
//     parent;
//   - OCI whiteouts and opaque markers hide what the layers below hold
//     and are never written; an opaque marker at the root hides every
//     layer below; a non-directory in an upper layer hides a lower
//     directory and everything under it, and a directory in an upper
//     layer over a lower non-directory hides what lay below that;
//   - a hard link whose target is visible stays a hard link; one whose target
//     an upper layer shadowed becomes a regular file with the target's
//     content and metadata (further links to the same target link to it);
//   - sparse entries are written with their holes as zeros (the output
//     writer makes holes again); their logical size counts against
//     FlattenLimits.MaxBytes.
//
// Symlink targets are kept verbatim (they resolve inside the image's root
// when used). Extended attributes are kept, except overlayfs's own
// (trusted.overlay.*, user.overlay.*), which the overlay applier does not
// let a layer set either.
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
	// MaxLayerBytes bounds the logical size of one layer's regular files
	// (a sparse entry's holes included), as the overlay materializer's
	// MaxLayerBytes does. Exceeding it is a property of the layer: the
	// error wraps layerio.ErrLimitExceeded but not ErrBudgetExceeded.
	MaxLayerBytes int64
}

// MaxSymlinkTarget is the longest symlink target an image may hold (Linux's
// PATH_MAX less the terminating NUL); a longer one fails with
// ErrInvalidLayer, as the kernel and e2fsck refuse it.
const MaxSymlinkTarget = layerio.MaxSymlinkTarget

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
	// layer is the layer whose entry (or implicit parent) the path shows.
	layer int
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
	elim := layerio.EntryLimits{MaxBytes: f.lim.MaxLayerBytes}
	if f.lim.MaxEntries > 0 {
		// What is left of the image's budget, so that Entries stops a layer
		// of markers (which it hands out only at the end) in time.
		elim.MaxEntries = max(f.lim.MaxEntries-f.entries, 1)
	}
	ents := layerio.NewEntries(rc, elim)
	var counted int64 // tar headers counted against the image's limit
	for {
		e, err := ents.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if f.lim.MaxEntries > 0 && f.entries+ents.Stats().Headers > f.lim.MaxEntries {
				return fmt.Errorf("ext4: flatten: layer %d: %w: more than %d tar entries in the image", idx, layerio.ErrBudgetExceeded, f.lim.MaxEntries)
			}
			if errors.Is(err, ErrInvalidLayer) {
				// Corrupt bytes often break the tar before the verifying
				// reader reaches EOF: read on to report a mismatch as one.
				if _, derr := io.Copy(io.Discard, rc); errors.Is(derr, blob.ErrMismatch) {
					return fmt.Errorf("ext4: flatten: layer %d: %w", idx, derr)
				}
			}
			// The layer reader's own error (a digest mismatch, a limit, a
			// cancelled context, I/O) stays testable with errors.Is.
			return fmt.Errorf("ext4: flatten: layer %d: %w", idx, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		headers := ents.Stats().Headers
		if err := f.count(idx, headers-counted, e); err != nil {
			return err
		}
		counted = headers
		name := e.Name
		if name == "" {
			name = "."
		}
		hdr := e.Header
		switch e.Kind {
		case layerio.KindWhiteout:
			f.whiteout(idx, name)
			continue
		case layerio.KindOpaque:
			f.opaque(idx, name)
			continue
		}

		isDir := e.Kind == layerio.KindDir
		visible := true
		if st := f.paths[name]; st != nil && st.kind != 0 {
			switch {
			case isDir && (st.kind == kindDir || st.kind == kindSynthesized) && st.layer == idx:
				// This layer's directory again (implicit first, or an
				// earlier header): this header gives its metadata.
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

		if e.Kind == layerio.KindLink {
			if err := f.link(idx, name, e.Link, hdr, visible, links); err != nil {
				return err
			}
			continue
		}

		if !visible {
			if e.Kind == layerio.KindFile && hdr.Size > 0 {
				f.stats.ShadowedBytes += hdr.Size
				// Spool: a later hard link in this layer may need the content.
				if f.spool == nil {
					sp, err := os.CreateTemp(f.spoolDir, "flatten-spool-*")
					if err != nil {
						return fmt.Errorf("ext4: flatten: spool file: %w", err)
					}
					f.spool = sp
				}
				n, err := io.CopyBuffer(f.spool, io.LimitReader(ents, hdr.Size), f.copyBuf())
				if err != nil {
					return layerErr(idx, name, err)
				}
				if n != hdr.Size {
					return fmt.Errorf("ext4: flatten: layer %d: %w: %q truncated", idx, ErrInvalidLayer, name)
				}
				links[name] = &layerLink{hdr: hdr, off: spoolEnd}
				spoolEnd += n
				f.stats.SpooledBytes += n
			} else if !isDir {
				links[name] = &layerLink{hdr: hdr, off: -1}
			}
			continue
		}

		if err := f.parents(name, idx); err != nil {
			return err
		}
		out := outHeader(hdr, name)
		if err := f.tw.WriteHeader(out); err != nil {
			return err
		}
		if e.Kind == layerio.KindFile && hdr.Size > 0 {
			n, err := io.CopyBuffer(f.tw, io.LimitReader(ents, hdr.Size), f.copyBuf())
			if err != nil {
				return layerErr(idx, name, err)
			}
			if n != hdr.Size {
				return fmt.Errorf("ext4: flatten: layer %d: %w: %q truncated", idx, ErrInvalidLayer, name)
			}
		}
		kind := kindNonDir
		switch {
		case e.Implicit:
			kind = kindSynthesized
			f.stats.Synthesized++
		case isDir:
			kind = kindDir
			f.stats.Entries++
		default:
			f.stats.Entries++
		}
		if st, ok := f.paths[name]; ok {
			st.kind, st.layer = kind, idx
		} else {
			f.paths[name] = &pathState{kind: kind, layer: idx}
		}
		if !isDir {
			links[name] = &layerLink{emitted: name}
		}
	}
	return nil
}

// whiteout applies layer idx's whiteout of name (which the layer holds no
// entry of) to the layers below.
func (f *flattener) whiteout(idx int, name string) {
	st := f.paths[name]
	switch {
	case st != nil && (st.kind == kindDir || st.kind == kindSynthesized):
		// An upper layer made the directory: nothing below this layer
		// shows through it.
		st.opaqueBelow = max(st.opaqueBelow, idx)
	case st != nil && st.kind != 0:
		// Already decided by an upper layer.
	case f.hidden(name, idx):
	case st == nil:
		f.paths[name] = &pathState{kind: kindWhiteout, layer: idx}
	default:
		st.kind, st.layer = kindWhiteout, idx
	}
}

// opaque applies layer idx's opaque marker of directory name ("." the
// root) to the layers below.
func (f *flattener) opaque(idx int, name string) {
	st, ok := f.paths[name]
	if !ok {
		st = &pathState{}
		f.paths[name] = st
	}
	st.opaqueBelow = max(st.opaqueBelow, idx)
}

// count adds headers tar headers and entry e to the whole image's work and
// checks the limits.
func (f *flattener) count(idx int, headers int64, e *layerio.Entry) error {
	f.entries += headers
	if f.lim.MaxEntries > 0 && f.entries > f.lim.MaxEntries {
		return fmt.Errorf("ext4: flatten: layer %d: %w: more than %d tar entries in the image", idx, layerio.ErrBudgetExceeded, f.lim.MaxEntries)
	}
	if e.Kind == layerio.KindFile && e.Header.Size > 0 {
		f.bytes += e.Header.Size
		if f.lim.MaxBytes > 0 && (f.bytes > f.lim.MaxBytes || f.bytes < 0) {
			return fmt.Errorf("ext4: flatten: layer %d: %w: more than %d bytes of file content in the image", idx, layerio.ErrBudgetExceeded, f.lim.MaxBytes)
		}
	}
	return nil
}

// link handles a hard link entry name -> hdr.Linkname within layer idx.
func (f *flattener) link(idx int, name, target string, hdr *tar.Header, visible bool, links map[string]*layerLink) error {
	tl, ok := links[target]
	if !ok {
		return fmt.Errorf("ext4: flatten: layer %d: %w: hard link %q -> %q: target is not an earlier non-directory entry of the same layer", idx, ErrInvalidLayer, name, hdr.Linkname)
	}
	if !visible {
		links[name] = tl // a later link to this name means the same inode
		return nil
	}
	if err := f.parents(name, idx); err != nil {
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
		st.kind, st.layer = kindNonDir, idx
	} else {
		f.paths[name] = &pathState{kind: kindNonDir, layer: idx}
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

// parents writes synthesized directories, as layer idx's, for every
// ancestor of name that has not been written yet, outermost first
// (layerio.Entries hands out a layer's parents first, so this is a
// safety net).
func (f *flattener) parents(name string, idx int) error {
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
			st.kind, st.layer = kindSynthesized, idx
		} else {
			f.paths[p] = &pathState{kind: kindSynthesized, layer: idx}
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
	if h.Typeflag == tar.TypeGNUSparse {
		out.Typeflag = tar.TypeReg // its holes are read as zeros
	}
	if h.Typeflag == tar.TypeDir {
		out.Name += "/"
	}
	if out.Typeflag != tar.TypeReg {
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
