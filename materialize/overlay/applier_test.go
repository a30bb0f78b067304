package overlay

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/materialize/internal/tartest"
)

const pwned = "strata-breakout-pwned"

// sandbox is a parent directory holding the layer directory and a sentinel
// sibling, "outside", whose tree must never change.
type sandbox struct {
	parent, layer, outside string
	before                 tartest.Tree
}

func newSandbox(t testing.TB) *sandbox {
	t.Helper()
	s := &sandbox{parent: t.TempDir()}
	s.layer = filepath.Join(s.parent, "layer")
	s.outside = filepath.Join(s.parent, "outside")
	for _, d := range []string{s.layer, s.outside, filepath.Join(s.outside, "sub")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(s.outside, "secret"), []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	if s.before, err = tartest.Snapshot(s.outside); err != nil {
		t.Fatal(err)
	}
	return s
}

// check fails t if anything outside the layer directory changed.
func (s *sandbox) check(t testing.TB) {
	t.Helper()
	after, err := tartest.Snapshot(s.outside)
	if err != nil {
		t.Fatal(err)
	}
	if d := tartest.Diff(s.before, after); d != nil {
		t.Fatalf("the sentinel directory beside the layer changed:\n%s", strings.Join(d, "\n"))
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(s.outside, "secret"), &st); err != nil || st.Nlink != 1 {
		t.Fatalf("sentinel secret: nlink %d, %v (a hard link to it was made)", st.Nlink, err)
	}
	es, err := os.ReadDir(s.parent)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "layer,outside" {
		t.Fatalf("entries beside the layer: %v", names)
	}
	for _, p := range []string{"/" + pwned, "/tmp/" + pwned, "/etc/" + pwned} {
		if _, err := os.Lstat(p); err == nil {
			t.Fatalf("%s exists", p)
		}
	}
}

func applyBytes(ctx context.Context, dir string, tarBytes []byte, cfg applyConfig) (applyStats, error) {
	if cfg.opaqueXattr == "" {
		cfg.opaqueXattr = trustedOpaque
	}
	return applyLayer(ctx, dir, bytes.NewReader(tarBytes), cfg)
}

func TestApplyBreakout(t *testing.T) {
	requireRoot(t, "the breakout table (device nodes, ownership, trusted xattrs)")
	isFile := func(rel, content string) func(*testing.T, *sandbox) {
		return func(t *testing.T, s *sandbox) {
			t.Helper()
			b, err := os.ReadFile(filepath.Join(s.layer, rel))
			if err != nil || string(b) != content {
				t.Errorf("%s = %q, %v; want %q", rel, b, err, content)
			}
		}
	}
	isSymlink := func(rel, target string) func(*testing.T, *sandbox) {
		return func(t *testing.T, s *sandbox) {
			t.Helper()
			got, err := os.Readlink(filepath.Join(s.layer, rel))
			if err != nil || got != target {
				t.Errorf("%s -> %q, %v; want -> %q", rel, got, err, target)
			}
		}
	}
	tests := []struct {
		desc    string
		build   func(s *sandbox) *tartest.Builder
		wantErr error // nil: contained, must succeed
		check   func(*testing.T, *sandbox)
	}{
		{
			desc:  "absolute path is taken relative to the layer root",
			build: func(s *sandbox) *tartest.Builder { return tartest.New().File("/tmp/"+pwned, []byte("x")) },
			check: isFile("tmp/"+pwned, "x"),
		},
		{
			desc:  "absolute path naming the sentinel directory",
			build: func(s *sandbox) *tartest.Builder { return tartest.New().File(s.outside+"/secret", []byte("x")) },
			check: func(t *testing.T, s *sandbox) { isFile(strings.TrimPrefix(s.outside, "/")+"/secret", "x")(t, s) },
		},
		{
			desc:  "dot-dot climbs no higher than the root",
			build: func(s *sandbox) *tartest.Builder { return tartest.New().File("../../../../"+pwned, []byte("x")) },
			check: isFile(pwned, "x"),
		},
		{
			desc:  "dot-dot into the sibling directory",
			build: func(s *sandbox) *tartest.Builder { return tartest.New().File("../outside/secret", []byte("x")) },
			check: isFile("outside/secret", "x"),
		},
		{
			desc: "relative symlink pointing out, then a file through it",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Symlink("escape", "../outside").File("escape/secret", []byte("x"))
			},
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "absolute symlink to the sentinel, then a file through it",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Symlink("abs", s.outside).File("abs/secret", []byte("x"))
			},
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "symlink chain leading out",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Dir("d").Symlink("a", "b").Symlink("b", "d/c").Symlink("d/c", "../../../..").
					File("a/tmp/"+pwned, []byte("x"))
			},
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "symlink to /proc/self/root, then a file through it",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Symlink("p", "/proc/self/root/tmp").File("p/"+pwned, []byte("x"))
			},
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "a later entry of a symlink's name is dropped, not written through it (the first entry wins)",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Symlink("secret", s.outside+"/secret").File("secret", []byte("x"))
			},
			check: func(t *testing.T, s *sandbox) { isSymlink("secret", s.outside+"/secret")(t, s) },
		},
		{
			desc: "a later directory of a symlink's name is dropped, and a file under it refused",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Symlink("d", s.outside).Dir("d", tartest.Mode(0o700)).File("d/f", []byte("x"))
			},
			wantErr: ErrInvalidLayer,
		},
		{
			desc:    "hard link to a file outside (relative)",
			build:   func(s *sandbox) *tartest.Builder { return tartest.New().Link("l", "../outside/secret") },
			wantErr: ErrInvalidLayer,
		},
		{
			desc:    "hard link to a file outside (absolute)",
			build:   func(s *sandbox) *tartest.Builder { return tartest.New().Link("l", s.outside+"/secret") },
			wantErr: ErrInvalidLayer,
		},
		{
			desc:    "hard link to a missing target",
			build:   func(s *sandbox) *tartest.Builder { return tartest.New().File("a", nil).Link("l", "nope") },
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "hard link through a symlinked directory pointing out",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Symlink("d", s.outside).Link("l", "d/secret")
			},
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "hard link to a symlink pointing out links the symlink itself",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Symlink("s", s.outside+"/secret").Link("h", "s")
			},
			check: func(t *testing.T, s *sandbox) { isSymlink("h", s.outside+"/secret")(t, s) },
		},
		{
			desc:    "hard link to a directory",
			build:   func(s *sandbox) *tartest.Builder { return tartest.New().Dir("d").Link("h", "d") },
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "duplicate entries: the first one wins",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().File("f", []byte("first")).File("f", []byte("second")).
					Dir("d").File("d/child", []byte("kept")).File("d", []byte("file now"))
			},
			check: func(t *testing.T, s *sandbox) {
				isFile("f", "first")(t, s)
				isFile("d/child", "kept")(t, s)
			},
		},
		{
			desc: "duplicate directory keeps its contents and takes the new mode",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Dir("d").File("d/f", []byte("kept")).Dir("d", tartest.Mode(0o700))
			},
			check: func(t *testing.T, s *sandbox) {
				isFile("d/f", "kept")(t, s)
				if fi, err := os.Stat(filepath.Join(s.layer, "d")); err != nil || fi.Mode().Perm() != 0o700 {
					t.Errorf("d: %v %v", fi.Mode(), err)
				}
			},
		},
		{
			desc: "whiteout of dot-dot",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Header(tar.Header{Typeflag: tar.TypeReg, Name: "a/.wh..."}, nil)
			},
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "whiteout of dot",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Header(tar.Header{Typeflag: tar.TypeReg, Name: ".wh.."}, nil)
			},
			wantErr: ErrInvalidLayer,
		},
		{
			desc:  "whiteout climbing out is taken inside",
			build: func(s *sandbox) *tartest.Builder { return tartest.New().Whiteout("../outside") },
			check: func(t *testing.T, s *sandbox) {
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(s.layer, "outside"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
					t.Errorf("whiteout not created inside: %v", err)
				}
			},
		},
		{
			desc: "whiteout under a symlink pointing out",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Symlink("d", s.outside).Whiteout("d/secret")
			},
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "opaque marker in a symlink pointing out",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Symlink("d", s.outside).Opaque("d")
			},
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "a layer cannot forge overlayfs xattrs",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Dir("d", tartest.Xattr("trusted.overlay.opaque", []byte("y")),
					tartest.Xattr("trusted.overlay.redirect", []byte("/etc")), tartest.Xattr("user.overlay.opaque", []byte("y")))
			},
			check: func(t *testing.T, s *sandbox) {
				n, _ := unix.Llistxattr(filepath.Join(s.layer, "d"), make([]byte, 256))
				if n > 0 {
					t.Errorf("xattrs set on d: %d bytes of names", n)
				}
			},
		},
		{
			desc: "a symlink loop in a parent path",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Symlink("a", "b").Symlink("b", "a").File("a/x", nil)
			},
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "dangling symlinks whose targets resolve differently lexically and physically",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Symlink("x", "p/q").Symlink("s", "x/y/../../../r").File("s/z/f", nil).
					Symlink("a", "b/c").Symlink("b", "a/..").File("a/x/y", nil)
			},
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "a PAX global header is ignored",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Header(tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header",
					PAXRecords: map[string]string{"comment": "x"}}, nil).File("f", []byte("x"))
			},
			check: func(t *testing.T, s *sandbox) {
				if es, _ := os.ReadDir(s.layer); len(es) != 1 {
					t.Errorf("layer holds %d entries, want only f", len(es))
				}
			},
		},
		{
			desc:    "a path through a regular file",
			build:   func(s *sandbox) *tartest.Builder { return tartest.New().File("f", nil).File("f/x", nil) },
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "the layer root as a non-directory",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Header(tar.Header{Typeflag: tar.TypeSymlink, Name: "./", Linkname: s.outside}, nil)
			},
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "device entries as root are created inside",
			build: func(s *sandbox) *tartest.Builder {
				return tartest.New().Char("../../dev/"+pwned, 1, 3).Block("/dev/"+pwned+"b", 7, 0)
			},
			check: func(t *testing.T, s *sandbox) {
				if _, err := os.Lstat(filepath.Join(s.layer, "dev", pwned)); err != nil {
					t.Error(err)
				}
			},
		},
		{
			desc:    "an entry claiming more than the byte limit (as a sparse file would)",
			build:   nil, // hugeHeaderTar
			wantErr: ErrLimitExceeded,
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			s := newSandbox(t)
			var tb []byte
			if tc.build == nil {
				tb = hugeHeaderTar(t)
			} else {
				tb = tc.build(s).Tar()
			}
			_, err := applyBytes(context.Background(), s.layer, tb, applyConfig{privileged: true, maxBytes: 1 << 30})
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("want contained, got error %v", err)
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			s.check(t)
			if tc.check != nil && err == nil {
				tc.check(t, s)
			}
		})
	}
}

// hugeHeaderTar returns a tar holding only the header of a 1 TiB file: a
// GNU sparse entry made of one hole would be as short and as large.
func hugeHeaderTar(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "big", Size: 1 << 40}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestApplyAsNonRoot applies device nodes, foreign ownership and privileged
// xattrs without privilege: they are skipped, the rest is extracted, and
// nothing leaves the root. As root it re-runs itself as nobody.
func TestApplyAsNonRoot(t *testing.T) {
	if os.Geteuid() == 0 {
		if os.Getenv("STRATA_OVERLAY_NONROOT_CHILD") != "" {
			t.Fatal("child still root")
		}
		dir := t.TempDir()
		for _, d := range []string{dir, filepath.Dir(dir)} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		bin := filepath.Join(dir, "overlay.test")
		b, err := os.ReadFile(self)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, b, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-test.run=^TestApplyAsNonRoot$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "STRATA_OVERLAY_NONROOT_CHILD=1", "TMPDIR=/tmp")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestApplyAsNonRoot") {
			t.Fatalf("as nobody: %v\n%s", err, out)
		}
		return
	}
	s := newSandbox(t)
	tb := tartest.New().
		Char("dev/null", 1, 3).Block("dev/sda", 8, 0).FIFO("fifo").
		File("owned", []byte("x"), tartest.Owner(1000, 1000), tartest.Xattr("security.capability", tartest.Capability(1<<13))).
		File("plain", []byte("p"), tartest.Xattr("user.k", []byte("v"))).
		Dir("o").Opaque("o").Whiteout("gone").
		Tar()
	st, err := applyBytes(context.Background(), s.layer, tb, applyConfig{opaqueXattr: userOpaque, privileged: false})
	if err != nil {
		t.Fatal(err)
	}
	s.check(t)
	tree, err := tartest.Snapshot(s.layer)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tree["dev/null"]; ok {
		t.Error("device node created without privilege")
	}
	if tree["fifo"].Type != tartest.TypeFIFO || tree["plain"].Xattrs["user.k"] != "v" || tree["owned"].Size != 1 {
		t.Errorf("unprivileged entries missing: %+v", tree)
	}
	if tree["o"].Xattrs != nil { // user.overlay.* is left out of snapshots; check directly
		t.Errorf("o xattrs %v", tree["o"].Xattrs)
	}
	if n, err := unix.Lgetxattr(filepath.Join(s.layer, "o"), userOpaque, make([]byte, 4)); err != nil || n != 1 {
		t.Errorf("user.overlay.opaque: %d, %v", n, err)
	}
	if g := tree["gone"]; g.Type != tartest.TypeChar || g.Major != 0 {
		t.Errorf("whiteout as non-root: %+v", g)
	}
	if st.Skipped < 3 {
		t.Errorf("skipped %d entries/attributes, want at least 3 (two devices, chown)", st.Skipped)
	}
}

func FuzzApply(f *testing.F) {
	f.Add(tartest.New().File("/tmp/"+pwned, []byte("x")).File("../../"+pwned, nil).Tar())
	f.Add(tartest.New().Symlink("escape", "../outside").File("escape/secret", []byte("x")).Tar())
	f.Add(tartest.New().Symlink("a", "/").Dir("a/b").Link("h", "a/b/../../outside/secret").Tar())
	f.Add(tartest.New().Dir("d").File("d/f", []byte("1")).Link("d/l", "d/f").Whiteout("d/f").Opaque("d").
		File("d", []byte("x")).Symlink("s", "d").Char("c", 1, 3).FIFO("p").Tar())
	f.Add(tartest.New().Header(tar.Header{Typeflag: tar.TypeReg, Name: "a/.wh..."}, nil).Tar())
	f.Add(tartest.New().Symlink("x", "p/q").Symlink("s", "x/y/../../r").File("s/z/f", nil).Tar())
	f.Add(tartest.New().Symlink("a", "b/c").Symlink("b", "a/..").File("a/x/y", nil).Tar())
	f.Add(tartest.Fixtures()[0].Layers[0])
	f.Add(tartest.New().Dir("ro", tartest.Mode(0o555)).File("ro/f", make([]byte, 3*holeBlock)).Dir("ro", tartest.Mode(0o500)).
		Symlink("ro/s", string(bytes.Repeat([]byte("s"), MaxSymlinkTarget+1))).Link("ro/h", "nowhere").Tar())
	privileged := os.Geteuid() == 0
	f.Fuzz(func(t *testing.T, data []byte) {
		s := newSandbox(t)
		// Errors are expected for most inputs; escaping or panicking is not.
		applyBytes(context.Background(), s.layer, data, applyConfig{privileged: privileged, maxBytes: 1 << 20, maxEntries: 1000})
		s.check(t)
	})
}

// TestApplyModesUnderUmask checks exact modes whatever the process umask
// (files are created with their final mode only when the umask spares it).
func TestApplyModesUnderUmask(t *testing.T) {
	for _, umask := range []int{0o022, 0o077, 0o000} {
		t.Run(strconv.FormatInt(int64(umask), 8), func(t *testing.T) {
			old := syscall.Umask(umask)
			defer syscall.Umask(old)
			got, known := processUmask()
			if !known || got != umask {
				t.Fatalf("processUmask = %o, %v; want %o", got, known, umask)
			}
			s := newSandbox(t)
			tb := tartest.New().File("a", nil, tartest.Mode(0o644)).File("b", nil, tartest.Mode(0o666)).
				File("c", nil, tartest.Mode(0o4755)).File("d", nil, tartest.Mode(0o000)).Dir("e", tartest.Mode(0o777)).
				FIFO("f", tartest.Mode(0o666)).Tar()
			if _, err := applyBytes(context.Background(), s.layer, tb, applyConfig{umask: got, umaskKnown: true, privileged: os.Geteuid() == 0}); err != nil {
				t.Fatal(err)
			}
			tree, err := tartest.Snapshot(s.layer)
			if err != nil {
				t.Fatal(err)
			}
			for name, want := range map[string]uint32{"a": 0o644, "b": 0o666, "c": 0o4755, "d": 0, "e": 0o777, "f": 0o666} {
				if tree[name].Mode != want {
					t.Errorf("%s: mode %04o, want %04o", name, tree[name].Mode, want)
				}
			}
		})
	}
}
