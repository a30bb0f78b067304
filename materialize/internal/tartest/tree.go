package tartest

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/sys/unix"
)

// Node types.
const (
	TypeFile    = "file"
	TypeDir     = "dir"
	TypeSymlink = "symlink"
	TypeChar    = "char"
	TypeBlock   = "block"
	TypeFIFO    = "fifo"
	TypeSocket  = "socket"
)

// Node is what a Tree records about one path.
type Node struct {
	Type string
	// Mode is the permission bits plus setuid (04000), setgid (02000) and
	// sticky (01000).
	Mode     uint32
	UID, GID int
	// Size and SHA256 (hex) describe a regular file's content.
	Size   int64
	SHA256 string
	// Link is a symlink's target.
	Link string
	// Major and Minor are a device's numbers.
	Major, Minor uint32
	// Xattrs holds the extended attributes, values as raw bytes in a string;
	// overlayfs-internal ones (trusted.overlay.*, user.overlay.*) are left out.
	Xattrs map[string]string
	// MTime is the modification time in whole seconds since the epoch.
	MTime int64
	// Implicit marks (in Expected) a parent directory no layer declared.
	Implicit bool
}

// Tree maps slash-separated paths relative to the root ("etc/passwd"; the
// root itself is not included) to their Nodes.
type Tree map[string]Node

// Snapshot walks the tree under root without following symlinks and records
// every path below it. Hard links appear as separate regular files with the
// same content and metadata (link counts are not recorded). Whiteout
// character devices (0:0) in an unmounted layer directory are recorded as
// char devices like any other.
func Snapshot(root string) (Tree, error) {
	t := Tree{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		n, err := snapNode(p)
		if err != nil {
			return err
		}
		t[filepath.ToSlash(rel)] = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", root, err)
	}
	return t, nil
}

func snapNode(p string) (Node, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return Node{}, &os.PathError{Op: "lstat", Path: p, Err: err}
	}
	n := Node{Mode: st.Mode & 0o7777, UID: int(st.Uid), GID: int(st.Gid), MTime: st.Mtim.Sec}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		n.Type = TypeFile
		f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return Node{}, err
		}
		h := sha256.New()
		sz, err := io.Copy(h, f)
		f.Close()
		if err != nil {
			return Node{}, err
		}
		n.Size, n.SHA256 = sz, hex.EncodeToString(h.Sum(nil))
	case unix.S_IFDIR:
		n.Type = TypeDir
	case unix.S_IFLNK:
		n.Type = TypeSymlink
		l, err := os.Readlink(p)
		if err != nil {
			return Node{}, err
		}
		n.Link = l
	case unix.S_IFCHR, unix.S_IFBLK:
		n.Type = TypeChar
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			n.Type = TypeBlock
		}
		n.Major, n.Minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	case unix.S_IFIFO:
		n.Type = TypeFIFO
	case unix.S_IFSOCK:
		n.Type = TypeSocket
	default:
		return Node{}, fmt.Errorf("%s: unknown file type %o", p, st.Mode&unix.S_IFMT)
	}
	x, err := listXattrs(p)
	if err != nil {
		return Node{}, err
	}
	n.Xattrs = x
	return n, nil
}

func listXattrs(p string) (map[string]string, error) {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		return nil, &os.PathError{Op: "llistxattr", Path: p, Err: err}
	}
	if sz == 0 {
		return nil, nil
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, &os.PathError{Op: "llistxattr", Path: p, Err: err}
	}
	var out map[string]string
	for _, name := range strings.Split(string(buf[:sz]), "\x00") {
		if name == "" || overlayInternal(name) {
			continue
		}
		vsz, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, &os.PathError{Op: "lgetxattr " + name, Path: p, Err: err}
		}
		v := make([]byte, vsz)
		vsz, err = unix.Lgetxattr(p, name, v)
		if err != nil {
			return nil, &os.PathError{Op: "lgetxattr " + name, Path: p, Err: err}
		}
		if out == nil {
			out = map[string]string{}
		}
		out[name] = string(v[:vsz])
	}
	return out, nil
}

func overlayInternal(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.") || strings.HasPrefix(name, "user.overlay.")
}

// Expected returns the tree that go-containerregistry's mutate.Extract
// flattening of img describes, as a Snapshot of a correct materialization
// would record it:
//
//   - the paths and headers are those of the flattened tar stream (whiteouts
//     and opaque directories applied by mutate.Extract);
//   - a hard link becomes a regular file with the content of its target in
//     the link's own layer (the topmost layer holding an entry of that name),
//     even when a later layer deleted or replaced the target; its metadata
//     is the link header's (tar writers record the target's);
//   - parent directories no layer declares are added as directories with
//     mode 0755 owned by 0:0 and Implicit set.
//
// Known limits of the reference (avoid them in fixtures that compare; the
// materializers' own rules are layerio.Entries's, and
// materialize/internal/equivtest compares the two materializers directly):
// mutate.Extract keeps the first of duplicate entries in one layer (so do
// the materializers, but a directory's later header still gives its
// metadata there), drops relative symlinks whose target climbs above
// the root, merges a lower directory's children through a file that an
// intermediate layer put in its place, hides entries that a layer adds under
// a name it also whites out, and takes a directory's metadata from the
// topmost layer that has a header for it (both materializers show the
// topmost layer holding the directory at all, header or implicit parent);
// and it does not follow symlinks in entry paths ("lib/x" under a symlink
// "lib"; the materializers refuse that within one layer).
func Expected(img v1.Image) (Tree, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("expected: layers: %w", err)
	}
	idx := make([]layerIndex, len(layers))
	for i, l := range layers {
		if idx[i], err = indexLayer(l); err != nil {
			return nil, fmt.Errorf("expected: layer %d: %w", i, err)
		}
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	t := Tree{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("expected: flattened stream: %w", err)
		}
		name := cleanName(h.Name)
		if name == "" {
			continue
		}
		if _, dup := t[name]; dup {
			continue
		}
		n := nodeFromHeader(h)
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeRegA:
			hs := sha256.New()
			sz, err := io.Copy(hs, tr)
			if err != nil {
				return nil, fmt.Errorf("expected: %s: %w", name, err)
			}
			n.Size, n.SHA256 = sz, hex.EncodeToString(hs.Sum(nil))
		case tar.TypeLink:
			c, ok := resolveLink(idx, name, cleanName(h.Linkname))
			if !ok {
				return nil, fmt.Errorf("expected: hard link %s -> %s: target not found in the link's layer", name, h.Linkname)
			}
			n.Size, n.SHA256 = c.size, c.sha
		}
		t[name] = n
	}
	for name := range t {
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			if _, ok := t[d]; !ok {
				t[d] = Node{Type: TypeDir, Mode: 0o755, Implicit: true}
			}
		}
	}
	return t, nil
}

func cleanName(name string) string {
	n := strings.TrimPrefix(path.Clean("/"+name), "/")
	return n
}

func nodeFromHeader(h *tar.Header) Node {
	n := Node{Mode: uint32(h.Mode) & 0o7777, UID: h.Uid, GID: h.Gid, MTime: h.ModTime.Unix()}
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeLink:
		n.Type = TypeFile
	case tar.TypeDir:
		n.Type = TypeDir
	case tar.TypeSymlink:
		n.Type = TypeSymlink
		n.Link = h.Linkname
	case tar.TypeChar:
		n.Type, n.Major, n.Minor = TypeChar, uint32(h.Devmajor), uint32(h.Devminor)
	case tar.TypeBlock:
		n.Type, n.Major, n.Minor = TypeBlock, uint32(h.Devmajor), uint32(h.Devminor)
	case tar.TypeFifo:
		n.Type = TypeFIFO
	default:
		n.Type = fmt.Sprintf("tar-type-%c", h.Typeflag)
	}
	for k, v := range h.PAXRecords {
		if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok && !overlayInternal(x) {
			if n.Xattrs == nil {
				n.Xattrs = map[string]string{}
			}
			n.Xattrs[x] = v
		}
	}
	return n
}

type content struct {
	size int64
	sha  string
}

// layerIndex records, for one layer, every entry in order.
type layerIndex struct {
	entries []indexEntry
}

type indexEntry struct {
	name, link string
	typ        byte
	c          content
}

func indexLayer(l v1.Layer) (layerIndex, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return layerIndex{}, err
	}
	defer rc.Close()
	var li layerIndex
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return li, nil
		}
		if err != nil {
			return layerIndex{}, err
		}
		e := indexEntry{name: cleanName(h.Name), link: cleanName(h.Linkname), typ: h.Typeflag}
		if h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeRegA {
			hs := sha256.New()
			sz, err := io.Copy(hs, tr)
			if err != nil {
				return layerIndex{}, err
			}
			e.c = content{size: sz, sha: hex.EncodeToString(hs.Sum(nil))}
		}
		li.entries = append(li.entries, e)
	}
}

// resolveLink finds the content a hard link name -> target refers to: in the
// topmost layer holding a link entry name -> target, the last regular file
// named target before it (following chains of links).
func resolveLink(idx []layerIndex, name, target string) (content, bool) {
	for i := len(idx) - 1; i >= 0; i-- {
		es := idx[i].entries
		for j := len(es) - 1; j >= 0; j-- {
			if es[j].name == name && es[j].typ == tar.TypeLink && es[j].link == target {
				return resolveIn(es[:j], target, 0)
			}
		}
	}
	return content{}, false
}

func resolveIn(es []indexEntry, target string, depth int) (content, bool) {
	if depth > 64 {
		return content{}, false
	}
	for j := len(es) - 1; j >= 0; j-- {
		if es[j].name != target {
			continue
		}
		switch es[j].typ {
		case tar.TypeReg, tar.TypeRegA:
			return es[j].c, true
		case tar.TypeLink:
			return resolveIn(es[:j], es[j].link, depth+1)
		}
		return content{}, false
	}
	return content{}, false
}

// Diff compares want with got and returns one human-readable line per
// difference, sorted by path; nil means equal. It compares type, mode
// (except for symlinks, whose mode Linux ignores), uid, gid, size and
// content hash of files, symlink targets, device numbers, xattrs, and the
// mtime of everything but directories (a directory's mtime changes as its
// entries are created and is not kept by every materializer). Implicit is
// not compared.
func Diff(want, got Tree) []string {
	var out []string
	for name, w := range want {
		g, ok := got[name]
		if !ok {
			out = append(out, fmt.Sprintf("%s: missing (want %s)", name, w.Type))
			continue
		}
		out = append(out, diffNode(name, w, g)...)
	}
	for name, g := range got {
		if _, ok := want[name]; !ok {
			out = append(out, fmt.Sprintf("%s: unexpected %s", name, g.Type))
		}
	}
	sort.Strings(out)
	return out
}

func diffNode(name string, w, g Node) []string {
	if w.Type != g.Type {
		return []string{fmt.Sprintf("%s: type %s, want %s", name, g.Type, w.Type)}
	}
	var out []string
	add := func(format string, args ...any) {
		out = append(out, name+": "+fmt.Sprintf(format, args...))
	}
	if w.Type != TypeSymlink && w.Mode != g.Mode {
		add("mode %04o, want %04o", g.Mode, w.Mode)
	}
	if w.UID != g.UID || w.GID != g.GID {
		add("owner %d:%d, want %d:%d", g.UID, g.GID, w.UID, w.GID)
	}
	switch w.Type {
	case TypeFile:
		if w.Size != g.Size || w.SHA256 != g.SHA256 {
			add("content %d bytes sha256 %.12s, want %d bytes sha256 %.12s", g.Size, g.SHA256, w.Size, w.SHA256)
		}
	case TypeSymlink:
		if w.Link != g.Link {
			add("symlink to %q, want %q", g.Link, w.Link)
		}
	case TypeChar, TypeBlock:
		if w.Major != g.Major || w.Minor != g.Minor {
			add("device %d:%d, want %d:%d", g.Major, g.Minor, w.Major, w.Minor)
		}
	}
	if w.Type != TypeDir && w.MTime != g.MTime {
		add("mtime %d, want %d", g.MTime, w.MTime)
	}
	for k, v := range w.Xattrs {
		gv, ok := g.Xattrs[k]
		switch {
		case !ok:
			add("xattr %s missing", k)
		case gv != v:
			add("xattr %s = %q, want %q", k, gv, v)
		}
	}
	for k := range g.Xattrs {
		if _, ok := w.Xattrs[k]; !ok {
			add("unexpected xattr %s", k)
		}
	}
	return out
}
