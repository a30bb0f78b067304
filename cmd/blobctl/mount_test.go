package main

import (
	"errors"
	"github.com/strata-oci/strata/internal/testenv"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// requireRoot skips a test that needs root, or fails it under CI=true,
// where the suite runs as root and must not skip it.
func requireRoot(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t, "materialize --mount (a real overlay mount)")
}

func TestMaterializeMount(t *testing.T) {
	requireRoot(t)
	f := newFixture(t, 8<<10, 3)
	mnt := filepath.Join(t.TempDir(), "mnt")
	ov := decode[overlayResult](t, must(t, f.args("materialize", f.ref, "--format", "overlay", "--mount", mnt, "--json")...))
	if ov.Mounted != mnt {
		t.Fatalf("mounted %q, want %q", ov.Mounted, mnt)
	}
	defer func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount: %v", err)
		}
	}()
	// Every layer's files are visible in the merged view.
	want := 0
	for _, d := range ov.LowerDirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		want += len(ents)
	}
	ents, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	if want == 0 || len(ents) != want {
		t.Fatalf("merged view has %d entries, the layers %d", len(ents), want)
	}
	// Read-only.
	err = os.WriteFile(filepath.Join(mnt, "new-file"), []byte("x"), 0o644)
	if !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write into the merged view: %v, want EROFS", err)
	}
}
