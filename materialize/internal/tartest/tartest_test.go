package tartest

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/blob"
)

func TestExpectedFixtures(t *testing.T) {
	want := map[string]map[string]func(Node) bool{
		"all-types": {
			"etc/hostname.link":                func(n Node) bool { return n.Type == TypeFile && n.Size == 7 && n.MTime == 1_000_000_000 },
			"usr/bin/setuid":                   func(n Node) bool { return n.Mode == 0o4755 },
			"usr/bin/suid-user":                func(n Node) bool { return n.Mode == 0o6750 && n.UID == 1000 },
			"tmp":                              func(n Node) bool { return n.Type == TypeDir && n.Mode == 0o1777 },
			"usr/bin/ping":                     func(n Node) bool { return len(n.Xattrs["security.capability"]) == 20 },
			"dev/null":                         func(n Node) bool { return n.Type == TypeChar && n.Major == 1 && n.Minor == 3 },
			"dev/loop0":                        func(n Node) bool { return n.Type == TypeBlock && n.Major == 7 && n.GID == 6 },
			"run/fifo":                         func(n Node) bool { return n.Type == TypeFIFO && n.Mode == 0o620 },
			"etc/localtime":                    func(n Node) bool { return n.Link == "/usr/share/zoneinfo/UTC" },
			"var/dotslash":                     func(n Node) bool { return n.Size == 3 },
			"data/xattrs":                      func(n Node) bool { return n.Xattrs["user.bin"] == "\x00\x01\x02\xff" },
			"opt/ünïcødé ✓.txt":                func(n Node) bool { return n.Type == TypeFile },
			"data/big":                         func(n Node) bool { return n.Size == 1<<20+17 },
			"home/user/.profile":               func(n Node) bool { return n.UID == 1000 && n.GID == 1001 && n.Mode == 0o600 },
			"usr/bin/setuid.link":              func(n Node) bool { return n.Mode == 0o4755 && n.Size == 12 },
			"usr/lib":                          func(n Node) bool { return n.Mode == 0o700 },
			"lib":                              func(n Node) bool { return n.Type == TypeSymlink },
			"srv":                              func(n Node) bool { return n.Mode == 0o2775 },
			"data":                             func(n Node) bool { return n.Xattrs["user.dir"] == "yes" },
			"data/empty":                       func(n Node) bool { return n.Size == 0 && n.SHA256 != "" },
			"usr/bin/sh":                       func(n Node) bool { return n.Link == "dash" },
			"var":                              func(n Node) bool { return n.Type == TypeDir && !n.Implicit },
			"etc/shadow":                       func(n Node) bool { return n.GID == 42 && n.Mode == 0o640 },
			"usr/bin/setgid":                   func(n Node) bool { return n.Mode == 0o2755 },
			"opt":                              func(n Node) bool { return n.Implicit && n.Mode == 0o755 },
			"opt/a-rather-long-directory-name": func(n Node) bool { return n.Implicit },
		},
		"whiteout-file": {
			"a/gone": nil, "top-gone": nil, "link-gone": nil, "a/never": nil,
			"a/keep": func(n Node) bool { return n.Size == 4 },
			"a/new":  func(n Node) bool { return n.Size == 3 },
		},
		"delete-dir": {
			"d": nil, "d/x": nil, "d/sub/file": nil, "r/old": nil,
			"r":       func(n Node) bool { return n.Mode == 0o700 },
			"r/new":   func(n Node) bool { return n.Size == 3 },
			"e/stays": func(n Node) bool { return n.Size == 1 },
		},
		"opaque-dir": {
			"o/a": nil, "o/sub": nil, "o/sub/c": nil,
			"o":       func(n Node) bool { return n.Mode == 0o750 && n.GID == 10 },
			"o/new":   func(n Node) bool { return n.Size == 3 },
			"p/lower": func(n Node) bool { return n.Size == 1 },
			"p/upper": func(n Node) bool { return n.Size == 1 },
		},
		"hardlinks": {
			"t": nil,
			"h": func(n Node) bool {
				return n.Type == TypeFile && n.Size == int64(len("target content")) && n.UID == 3 && n.Mode == 0o640
			},
			"u":      func(n Node) bool { return n.Size == int64(len("new u, different")) },
			"hu":     func(n Node) bool { return n.Size == int64(len("old u")) },
			"sub/g2": func(n Node) bool { return n.Size == 1 },
		},
		"type-changes": {
			"x/child": nil, "y/c": nil,
			"x": func(n Node) bool { return n.Type == TypeFile && n.Size == 6 && n.Mode == 0o600 },
			"y": func(n Node) bool { return n.Type == TypeFile },
			"s": func(n Node) bool { return n.Type == TypeFile },
			"p": func(n Node) bool { return n.Type == TypeDir },
		},
		"missing-parents": {
			"p":          func(n Node) bool { return n.Implicit && n.Type == TypeDir && n.Mode == 0o755 },
			"p/q/r":      func(n Node) bool { return n.Implicit },
			"p/q/r/file": func(n Node) bool { return n.Size == 4 },
			"p/q/other":  func(n Node) bool { return n.Size == 1 },
			"s/t/link":   func(n Node) bool { return n.Link == "../x" },
		},
		"compressions": {
			"z/zstd":   func(n Node) bool { return n.Size == 70_000 },
			"u/plain":  func(n Node) bool { return n.Size == 5 },
			"g/docker": func(n Node) bool { return n.Size == 6 },
		},
	}
	fs := Fixtures()
	if len(fs) != len(want) {
		t.Fatalf("%d fixtures, test covers %d", len(fs), len(want))
	}
	for _, f := range fs {
		t.Run(f.Name, func(t *testing.T) {
			tree, err := Expected(f.Image(t))
			if err != nil {
				t.Fatal(err)
			}
			checks, ok := want[f.Name]
			if !ok {
				t.Fatalf("no checks for fixture %s", f.Name)
			}
			for p, check := range checks {
				n, ok := tree[p]
				switch {
				case check == nil && ok:
					t.Errorf("%s present (%+v), want absent", p, n)
				case check != nil && !ok:
					t.Errorf("%s absent", p)
				case check != nil && !check(n):
					t.Errorf("%s: unexpected node %+v", p, n)
				}
			}
			for p := range tree {
				if strings.Contains(p, WhiteoutPrefix) {
					t.Errorf("whiteout marker %s in expected tree", p)
				}
			}
		})
	}
}

func TestSnapshotMatchesHandBuiltTree(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("root is required to test Snapshot of device nodes and owners, and CI=true")
		}
		t.Skip("not root: device nodes and chown not tested in Snapshot")
	}
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	p := func(s string) string { return filepath.Join(root, s) }
	must(os.Mkdir(p("d"), 0o755))
	must(unix.Chmod(p("d"), 0o1777))
	must(os.WriteFile(p("d/f"), []byte("hello"), 0o644))
	must(os.Chown(p("d/f"), 7, 8))
	must(unix.Chmod(p("d/f"), 0o4750))
	must(os.Link(p("d/f"), p("d/hl")))
	must(os.Symlink("f", p("d/s")))
	must(unix.Mknod(p("c"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))))
	must(unix.Mkfifo(p("fifo"), 0o640))
	must(unix.Setxattr(p("d/f"), "user.k", []byte("v"), 0))
	must(unix.Setxattr(p("d"), "trusted.overlay.opaque", []byte("y"), 0))
	tree, err := Snapshot(root)
	must(err)
	sum := "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
	want := Tree{
		"d":    {Type: TypeDir, Mode: 0o1777},
		"d/f":  {Type: TypeFile, Mode: 0o4750, UID: 7, GID: 8, Size: 5, SHA256: sum, Xattrs: map[string]string{"user.k": "v"}},
		"d/hl": {Type: TypeFile, Mode: 0o4750, UID: 7, GID: 8, Size: 5, SHA256: sum, Xattrs: map[string]string{"user.k": "v"}},
		"d/s":  {Type: TypeSymlink, Link: "f"},
		"c":    {Type: TypeChar, Mode: 0o600, Major: 1, Minor: 3},
		"fifo": {Type: TypeFIFO, Mode: 0o640},
	}
	for k, n := range want {
		n.MTime = tree[k].MTime
		want[k] = n
	}
	if d := Diff(want, tree); d != nil {
		t.Fatalf("snapshot differs:\n%s", strings.Join(d, "\n"))
	}
	if tree["d"].Xattrs != nil {
		t.Errorf("overlay-internal xattr recorded: %v", tree["d"].Xattrs)
	}
}

func TestDiff(t *testing.T) {
	base := Node{Type: TypeFile, Mode: 0o644, Size: 1, SHA256: "aa", MTime: 5, Xattrs: map[string]string{"user.a": "1"}}
	mod := func(f func(*Node)) Node { n := base; n.Xattrs = map[string]string{"user.a": "1"}; f(&n); return n }
	tests := []struct {
		desc string
		got  Tree
		want []string
	}{
		{"equal", Tree{"f": base}, nil},
		{"missing", Tree{}, []string{"f: missing (want file)"}},
		{"extra", Tree{"f": base, "g": {Type: TypeDir}}, []string{"g: unexpected dir"}},
		{"type", Tree{"f": mod(func(n *Node) { n.Type = TypeDir })}, []string{"f: type dir, want file"}},
		{"mode", Tree{"f": mod(func(n *Node) { n.Mode = 0o4644 })}, []string{"f: mode 4644, want 0644"}},
		{"owner", Tree{"f": mod(func(n *Node) { n.GID = 3 })}, []string{"f: owner 0:3, want 0:0"}},
		{"content", Tree{"f": mod(func(n *Node) { n.SHA256 = "bb" })}, []string{"f: content 1 bytes sha256 bb, want 1 bytes sha256 aa"}},
		{"mtime", Tree{"f": mod(func(n *Node) { n.MTime = 6 })}, []string{"f: mtime 6, want 5"}},
		{"xattr value", Tree{"f": mod(func(n *Node) { n.Xattrs["user.a"] = "2" })}, []string{`f: xattr user.a = "2", want "1"`}},
		{"xattr extra", Tree{"f": mod(func(n *Node) { n.Xattrs["user.b"] = "" })}, []string{"f: unexpected xattr user.b"}},
		{"xattr missing", Tree{"f": mod(func(n *Node) { n.Xattrs = nil })}, []string{"f: xattr user.a missing"}},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			got := Diff(Tree{"f": base}, tc.got)
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("Diff = %q, want %q", got, tc.want)
			}
		})
	}
	// Directory mtimes and symlink modes are not compared.
	if d := Diff(Tree{"d": {Type: TypeDir, MTime: 1}, "s": {Type: TypeSymlink, Mode: 0o777}},
		Tree{"d": {Type: TypeDir, MTime: 2}, "s": {Type: TypeSymlink, Mode: 0o755}}); d != nil {
		t.Errorf("Diff = %q, want nil", d)
	}
}

func TestFromV1VerifiesLayers(t *testing.T) {
	good := New().File("f", []byte("content")).Gzip()
	img := FromV1(t, Image(t, good, New().File("g", nil).Zstd(), New().Dir("d").Tar()))
	ls := img.Layers()
	if len(ls) != 3 {
		t.Fatalf("%d layers", len(ls))
	}
	wantTypes := []string{"application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.layer.v1.tar+zstd", "application/vnd.oci.image.layer.v1.tar"}
	for i, l := range ls {
		if string(l.MediaType()) != wantTypes[i] {
			t.Errorf("layer %d media type %s, want %s", i, l.MediaType(), wantTypes[i])
		}
	}
	if ls[0].Digest() != blob.FromBytes(good) || ls[0].Size() != int64(len(good)) {
		t.Fatalf("layer 0 digest %s size %d", ls[0].Digest(), ls[0].Size())
	}
	rc, err := ls[0].Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(b, good) {
		t.Fatalf("read %d bytes, err %v", len(b), err)
	}

	// A layer whose bytes do not match its digest fails at EOF.
	bad := &v1Layer{l: mustLayer(t, good), digest: blob.FromBytes([]byte("other")), size: int64(len(good))}
	rc, err = bad.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(rc)
	if !errors.Is(err, blob.ErrMismatch) {
		t.Fatalf("err = %v, want ErrMismatch", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ls[0].Open(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Open on cancelled ctx: %v", err)
	}
}

func mustLayer(t *testing.T, b []byte) *layer {
	l, err := NewLayer(b, MediaTypeOf(b))
	if err != nil {
		t.Fatal(err)
	}
	return l.(*layer)
}

func TestBuilderEntries(t *testing.T) {
	b := New().File("f", []byte("abc"), Mode(0o4755), Owner(1, 2)).Link("l", "f").
		Whiteout("d/x").Opaque("d").Header(tar.Header{Typeflag: tar.TypeReg, Name: "/abs/../../x"}, []byte("z"))
	tr := tar.NewReader(bytes.NewReader(b.Tar()))
	var got []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, h.Name)
		if h.Name == "l" && (h.Mode != 0o4755 || h.Uid != 1 || h.Gid != 2 || h.Linkname != "f") {
			t.Errorf("link header %+v does not carry the target's metadata", h)
		}
	}
	if want := "f l d/.wh.x d/.wh..wh..opq /abs/../../x"; strings.Join(got, " ") != want {
		t.Errorf("entries %q, want %q", got, want)
	}
}
