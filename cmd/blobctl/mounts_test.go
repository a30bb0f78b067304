package main

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/internal/admin"
)

// mountedAt reports whether /proc/self/mountinfo lists a mount at dir.
func mountedAt(t *testing.T, dir string) bool {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) > 4 && fs[4] == dir {
			return true
		}
	}
	return false
}

// mountForTest runs materialize --mount into a fresh directory and returns
// the result; the mount is undone at the end of the test if still there.
func mountForTest(t *testing.T, f *fixture) (overlayResult, string) {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), "mnt")
	ov := decode[overlayResult](t, must(t, f.args("materialize", f.ref, "--format", "overlay", "--mount", mnt, "--json")...))
	t.Cleanup(func() { _ = unmount(mnt) })
	if !mountedAt(t, mnt) {
		t.Fatalf("materialize --mount: nothing mounted at %s", mnt)
	}
	return ov, mnt
}

// viewIntact fails t unless the merged view at mnt shows every layer's
// entries.
func viewIntact(t *testing.T, when, mnt string, ov overlayResult) {
	t.Helper()
	layerDirsIntact(t, when, ov.LowerDirs)
	ents, err := os.ReadDir(mnt)
	if err != nil || len(ents) < len(ov.LowerDirs) {
		t.Fatalf("%s: merged view at %s has %d entries (%v), want %d", when, mnt, len(ents), err, len(ov.LowerDirs))
	}
}

// gc and the overlay budget keep the layers of a live mount; unmount
// releases them, and the next gc removes them.
func TestGCKeepsMountedLayers(t *testing.T) {
	requireRoot(t)
	f := newFixture(t, 8<<10, 3)
	ov, mnt := mountForTest(t, f)

	gc := decode[admin.GCResult](t, must(t, f.args("gc", "--json")...))
	if gc.Layers != 0 || gc.Mounts != 1 || gc.LayersLeased != 3 {
		t.Fatalf("gc with a live mount: %+v, want no layer removed, 1 mount, 3 layers leased", gc)
	}
	viewIntact(t, "after gc", mnt, ov)
	// The overlay budget's pass on open spares them too.
	must(t, f.args("--overlay-budget", "1KiB", "fetch", f.ref)...)
	viewIntact(t, "after an open with a 1KiB overlay budget", mnt, ov)
	// Mounting over the live mount is refused.
	if r := blobctl(t, "", f.args("materialize", f.ref, "--format", "overlay", "--mount", mnt)...); r.code != exitUsage || !strings.Contains(r.stderr, "already a mount point") {
		t.Errorf("second --mount on %s: exit %d, want %d\n%s", mnt, r.code, exitUsage, r.stderr)
	}

	out := must(t, f.args("unmount", mnt)...)
	if !strings.Contains(out, "unmounted "+mnt) || !strings.Contains(out, "released 3 layers") {
		t.Errorf("unmount output: %q", out)
	}
	if mountedAt(t, mnt) {
		t.Fatalf("%s still mounted after blobctl unmount", mnt)
	}
	// The fetch above recorded its 1KiB overlay budget in the root: the
	// release itself may already have evicted the layers; gc removes the
	// rest.
	gc = decode[admin.GCResult](t, must(t, f.args("gc", "--json")...))
	if gc.Mounts != 0 || gc.LayersLeased != 0 {
		t.Fatalf("gc after unmount: %+v, want no mount and no leased layer", gc)
	}
	for _, d := range ov.LowerDirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("layer dir %s left after unmount and gc: %v", d, err)
		}
	}
	// Nothing names it any more.
	if r := blobctl(t, "", f.args("unmount", mnt)...); r.code != exitNotFound {
		t.Errorf("unmount twice: exit %d, want %d\n%s", r.code, exitNotFound, r.stderr)
	}
}

// The same through the admin socket of a process holding the root: the
// holder loaded the lease, keeps the layers, and releases them on unmount.
func TestUnmountThroughHolder(t *testing.T) {
	requireRoot(t)
	f := newFixture(t, 8<<10, 2)
	ov, mnt := mountForTest(t, f)
	holdInChild(t, f.root)
	gc := decode[admin.GCResult](t, must(t, f.args("gc", "--json")...))
	if gc.Layers != 0 || gc.Mounts != 1 {
		t.Fatalf("gc through the holder with a live mount: %+v", gc)
	}
	viewIntact(t, "after gc through the holder", mnt, ov)
	must(t, f.args("unmount", mnt)...)
	if mountedAt(t, mnt) {
		t.Fatalf("%s still mounted", mnt)
	}
	gc = decode[admin.GCResult](t, must(t, f.args("gc", "--json")...))
	if gc.Layers != 2 {
		t.Fatalf("gc through the holder after unmount: %+v, want 2 layers removed", gc)
	}
}

// A lease whose mount was undone by other means (umount) is stale: gc drops
// it and removes the layers.
func TestStaleMountLeaseDropped(t *testing.T) {
	requireRoot(t)
	f := newFixture(t, 8<<10, 2)
	ov, mnt := mountForTest(t, f)
	if err := unmount(mnt); err != nil {
		t.Fatal(err)
	}
	gc := decode[admin.GCResult](t, must(t, f.args("gc", "--json")...))
	if gc.StaleMounts != 1 || gc.Mounts != 0 || gc.Layers != 2 {
		t.Fatalf("gc after an umount behind blobctl's back: %+v, want 1 stale mount dropped and 2 layers removed", gc)
	}
	for _, d := range ov.LowerDirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("layer dir %s left: %v", d, err)
		}
	}
	leases, _ := os.ReadDir(filepath.Join(f.root, "overlay", "mounts"))
	if len(leases) != 0 {
		t.Errorf("lease files left: %v", leases)
	}
}

// unmount refuses a directory no lease names, and leaves what is mounted
// there alone.
func TestUnmountRefusesForeignMount(t *testing.T) {
	requireRoot(t)
	f := newFixture(t, 4<<10, 1)
	must(t, f.args("fetch", f.ref)...)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unmount(dir)
	r := blobctl(t, "", f.args("unmount", dir)...)
	if r.code != exitNotFound || !strings.Contains(r.stderr, "no mount lease") {
		t.Errorf("unmount of a foreign mount: exit %d, want %d\n%s", r.code, exitNotFound, r.stderr)
	}
	if !mountedAt(t, dir) {
		t.Errorf("blobctl unmount unmounted a tmpfs it did not mount")
	}
}
