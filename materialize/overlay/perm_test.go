package overlay

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// TestRootPrivate: whatever Root and its layer directories were before,
// New leaves them 0700, and the layers' own modes stay as the tar says.
func TestRootPrivate(t *testing.T) {
	tests := []struct {
		desc  string
		setup func(t *testing.T, root string) // nil: Root does not exist yet
	}{
		{desc: "created by New", setup: nil},
		{desc: "existing 0755 root (a packaged /var/lib/strata)", setup: func(t *testing.T, root string) {
			mkdirMode(t, root, 0o755)
		}},
		{desc: "root and layer directories from an older version (0711)", setup: func(t *testing.T, root string) {
			mkdirMode(t, root, 0o711)
			mkdirMode(t, filepath.Join(root, "layers"), 0o711)
			mkdirMode(t, filepath.Join(root, "l"), 0o711)
		}},
		{desc: "world-writable root and subdirectories", setup: func(t *testing.T, root string) {
			for _, d := range []string{"", "layers", "l", "meta", "tmp"} {
				mkdirMode(t, filepath.Join(root, d), 0o777)
			}
		}},
		{desc: "root reached through a symbolic link", setup: func(t *testing.T, root string) {
			real := filepath.Join(filepath.Dir(root), "real")
			mkdirMode(t, real, 0o755)
			if err := os.Symlink(real, root); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "overlay")
			if tt.setup != nil {
				tt.setup(t, root)
			}
			m := newMaterializer(t, Config{Root: root})
			for _, d := range []string{root, filepath.Join(root, "layers"), filepath.Join(root, "l"), filepath.Join(root, "meta"), filepath.Join(root, "tmp")} {
				fi, err := os.Stat(d)
				if err != nil {
					t.Fatal(err)
				}
				if got := fi.Mode().Perm(); got != 0o700 {
					t.Errorf("%s: mode %v, want 0700", d, got)
				}
			}
			layer := tartest.New().Dir("d", tartest.Mode(0o751)).File("d/f", []byte("x"), tartest.Mode(0o640)).Tar()
			img := tartest.FromV1(t, tartest.Image(t, layer))
			res, err := m.Materialize(context.Background(), img)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Lease.Release()
			dir := filepath.Join(root, "layers", img.Layers()[0].Digest().Encoded())
			for p, want := range map[string]os.FileMode{"d": 0o751, "d/f": 0o640} {
				fi, err := os.Lstat(filepath.Join(dir, p))
				if err != nil {
					t.Fatal(err)
				}
				if got := fi.Mode().Perm(); got != want {
					t.Errorf("layer entry %s: mode %v, want %v (layer contents keep their modes)", p, got, want)
				}
			}
		})
	}
}

func mkdirMode(t *testing.T, dir string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
}

// TestRootOfAnotherUserRefused: a Root (or a directory under it) that
// belongs to another user is refused, and left as it was.
func TestRootOfAnotherUserRefused(t *testing.T) {
	requireRoot(t, "refusing a root owned by another user (needs chown)")
	tests := []struct {
		desc    string
		foreign string // the directory, relative to Root, owned by nobody
		link    bool   // Root is a symbolic link to the real directory
	}{
		{desc: "root owned by nobody", foreign: "."},
		{desc: "root is a link to a directory owned by nobody", foreign: ".", link: true},
		{desc: "layers owned by nobody", foreign: "layers"},
		{desc: "short-link directory owned by nobody", foreign: "l"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			base := t.TempDir()
			real := filepath.Join(base, "real")
			mkdirMode(t, filepath.Join(real, tt.foreign), 0o755)
			foreign := filepath.Join(real, tt.foreign)
			if err := os.Chown(foreign, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			root := real
			if tt.link {
				root = filepath.Join(base, "link")
				if err := os.Symlink(real, root); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := New(Config{Root: root}); err == nil {
				t.Fatalf("New accepted root %s with %s owned by uid 65534", root, tt.foreign)
			} else if !errors.Is(err, ErrNotPrivate) || !strings.Contains(err.Error(), "65534") {
				t.Errorf("error %v, want ErrNotPrivate naming uid 65534", err)
			}
			if fi, err := os.Stat(foreign); err != nil || fi.Mode().Perm() != 0o755 {
				t.Errorf("the other user's directory was changed: %v %v", fi.Mode(), err)
			}
		})
	}
}

// TestSetuidLayerUnreachableByOtherUsers (the CVE-2021-41091 class; the
// red-team test, now passing): a layer's setuid-root program is extracted
// with its owner and mode, still mounts and runs for root, but another
// local user has no path to it, even with Root inside a 0755 directory.
func TestSetuidLayerUnreachableByOtherUsers(t *testing.T) {
	requireRoot(t, "setuid files unreachable by other users (needs chown and a process as nobody)")
	id, err := exec.LookPath("id")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("no id binary and CI=true")
		}
		t.Skip("no id binary: setuid reachability not tested")
	}
	prog, err := os.ReadFile(id)
	if err != nil {
		t.Fatal(err)
	}
	base, err := os.MkdirTemp("", "strata-perm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil { // like /var/lib
		t.Fatal(err)
	}
	m := newMaterializer(t, Config{Root: filepath.Join(base, "overlay")})
	layer := tartest.New().Dir("bin").File("bin/rootid", prog, tartest.Mode(0o4755), tartest.Owner(0, 0)).Tar()
	img := tartest.FromV1(t, tartest.Image(t, layer))
	res, err := m.Materialize(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Lease.Release()
	h := img.Layers()[0].Digest().Encoded()
	path := filepath.Join(base, "overlay", "layers", h, "bin", "rootid")
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o755 || fi.Mode()&os.ModeSetuid == 0 {
		t.Fatalf("%s: mode %v, %v; want setuid 0755 kept", path, fi.Mode(), err)
	}
	// Another user: no path in.
	cmd := exec.Command(path, "-u")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("user nobody ran the layer's setuid-root program at %s (output %q)", path, out)
	}
	ids := strings.Split(strings.TrimPrefix(strings.Split(res.MountOptions, ",")[0], "lowerdir="), ":")
	for _, p := range []string{filepath.Join(base, "overlay"), res.LowerDirs[0], filepath.Join(res.MountDir, ids[0])} {
		cmd := exec.Command("/bin/ls", p+"/")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("user nobody listed %s: %q", p, out)
		}
	}
	// The mount (made by root) still sees the layer through the private
	// directories, and the program keeps its setuid bit there.
	target := mount(t, res)
	fi, err := os.Stat(filepath.Join(target, "bin", "rootid"))
	if err != nil || fi.Mode()&os.ModeSetuid == 0 {
		t.Fatalf("through the mount: %v %v", fi, err)
	}
	out, err := exec.Command(filepath.Join(target, "bin", "rootid"), "-u").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "0" {
		t.Errorf("root running the program through the mount: %q %v", out, err)
	}
}
