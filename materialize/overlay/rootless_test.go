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

	"github.com/strata-oci/strata/internal/testenv"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

const rootlessChildEnv = "STRATA_OVERLAY_ROOTLESS_CHILD"

// nobody is the unprivileged uid and gid the rootless tests run as.
const nobody = 65534

// runAsNobody re-runs test name as uid/gid 65534 (from a copy of the test
// binary that user can execute) with env added, and fails t unless it
// passes. It needs root; under CI=true a missing root fails.
func runAsNobody(t *testing.T, name string, env ...string) {
	t.Helper()
	testenv.RequireRoot(t, "switching to an unprivileged uid")
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
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "overlay.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^"+name+"$", "-test.count=1", "-test.v")
	cmd.Env = append(append(os.Environ(), rootlessChildEnv+"=1", "TMPDIR=/tmp"), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+name) {
		t.Fatalf("as uid %d: %v\n%s", nobody, err, out)
	}
}

// unprivilegedChild reports whether this process is the unprivileged
// child of runAsNobody (which then runs the test's body).
func unprivilegedChild(t *testing.T) bool {
	if os.Getenv(rootlessChildEnv) == "" {
		return false
	}
	if os.Geteuid() == 0 {
		t.Fatal("child still root")
	}
	return true
}

// TestRootlessReadOnlyDirectories: without privilege, directories with no
// owner write permission (0555 /usr/bin as Fedora and UBI ship it, 0000)
// extract with their content and end with their modes; the cache removes
// them again.
func TestRootlessReadOnlyDirectories(t *testing.T) {
	if !unprivilegedChild(t) {
		runAsNobody(t, t.Name())
		return
	}
	m := newMaterializer(t, Config{})
	layer := tartest.New().
		Dir("usr", tartest.Mode(0o755)).Dir("usr/bin", tartest.Mode(0o555)).
		File("usr/bin/ls", []byte("ls"), tartest.Mode(0o755)).Dir("usr/bin/sub", tartest.Mode(0o500)).
		File("usr/bin/sub/x", []byte("x")).
		Dir("locked", tartest.Mode(0o000)).File("locked/f", []byte("f")).Tar()
	img := tartest.FromV1(t, tartest.Image(t, layer))
	ctx := context.Background()
	res, err := m.Materialize(ctx, img)
	if err != nil {
		t.Fatalf("rootless extraction of read-only directories with content: %v", err)
	}
	dir := res.LowerDirs[0]
	for p, want := range map[string]os.FileMode{"usr/bin": 0o555, "usr/bin/sub": 0o500, "locked": 0o000, "usr/bin/ls": 0o755} {
		fi, err := os.Lstat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %v, want %v", p, got, want)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "usr/bin/sub/x")); err != nil || string(b) != "x" {
		t.Errorf("usr/bin/sub/x: %q, %v", b, err)
	}
	res.Lease.Release()
	// Removal makes the directories writable first.
	if err := m.Cleanup(ctx); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if es, _ := os.ReadDir(m.path("tmp")); len(es) != 0 {
		t.Errorf("tmp/ holds %d entries after Cleanup", len(es))
	}
}

// TestRootlessFailedLayerLeavesRootUsable: a layer with a file, then its
// parent again as a 0555 directory, then an invalid hard link fails
// cleanly without privilege: no temporary directory is left, and the root
// opens and extracts again.
func TestRootlessFailedLayerLeavesRootUsable(t *testing.T) {
	if !unprivilegedChild(t) {
		runAsNobody(t, t.Name())
		return
	}
	root := t.TempDir()
	m := newMaterializer(t, Config{Root: root})
	ctx := context.Background()
	crafted := tartest.New().File("a/f", []byte("f")).Dir("a", tartest.Mode(0o555)).Link("a/l", "nowhere").Gzip()
	_, err := m.Materialize(ctx, tartest.FromV1(t, tartest.Image(t, crafted)))
	if !errors.Is(err, ErrInvalidLayer) {
		t.Fatalf("crafted layer: %v, want ErrInvalidLayer", err)
	}
	if es, _ := os.ReadDir(m.path("tmp")); len(es) != 0 {
		t.Errorf("tmp/ holds %d entries after the failed layer", len(es))
	}
	m2 := newMaterializer(t, Config{Root: root})
	res, err := m2.Materialize(ctx, tartest.FromV1(t, tartest.Image(t, tartest.New().File("ok", []byte("ok")).Gzip())))
	if err != nil {
		t.Fatalf("root unusable after a failed layer: %v", err)
	}
	res.Lease.Release()
}

// TestLoadSkipsWhatItCannotRemove: a leftover under tmp/ that this user
// cannot remove (another user's directory with content) is reported and
// skipped; New still opens the root and the cache works.
func TestLoadSkipsWhatItCannotRemove(t *testing.T) {
	if !unprivilegedChild(t) {
		testenv.RequireRoot(t, "a leftover the cache's user cannot remove")
		base := t.TempDir()
		root := filepath.Join(base, "root")
		for _, d := range []string{base, root, filepath.Join(root, "tmp"), filepath.Join(root, "tmp", "evict-1")} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		// The cache's own directories are nobody's; the leftover's inner
		// directory is root's.
		for _, d := range []string{root, filepath.Join(root, "tmp"), filepath.Join(root, "tmp", "evict-1")} {
			if err := os.Chown(d, nobody, nobody); err != nil {
				t.Fatal(err)
			}
		}
		stuck := filepath.Join(root, "tmp", "evict-1", "l")
		if err := os.MkdirAll(stuck, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(stuck, "f"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		runAsNobody(t, t.Name(), "STRATA_TEST_ROOT="+root)
		return
	}
	root := os.Getenv("STRATA_TEST_ROOT")
	m, err := New(Config{Root: root})
	if err != nil {
		t.Fatalf("New with an unremovable leftover: %v", err)
	}
	res, err := m.Materialize(context.Background(), tartest.FromV1(t, tartest.Image(t, tartest.New().File("ok", []byte("ok")).Gzip())))
	if err != nil {
		t.Fatal(err)
	}
	res.Lease.Release()
}
