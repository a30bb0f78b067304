package overlay

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

func TestUnescapeMountinfo(t *testing.T) {
	for _, tc := range []struct{ desc, in, want string }{
		{"plain path", "/mnt/a", "/mnt/a"},
		{"space", `/mnt/a\040b`, "/mnt/a b"},
		{"tab, newline and backslash", `/x\011y\012z\134w`, "/x\ty\nz\\w"},
		{"backslash not followed by three octal digits", `/x\9`, `/x\9`},
		{"escape cut short at the end", `/x\04`, `/x\04`},
	} {
		if got := unescapeMountinfo(tc.in); got != tc.want {
			t.Errorf("%s: unescapeMountinfo(%q) = %q, want %q", tc.desc, tc.in, got, tc.want)
		}
	}
}

// A mount lease holds its layers against the budget and Cleanup, in this
// process and in the next one; the next one drops it once no overlay is
// mounted at its target.
func TestMountLeaseHoldsLayers(t *testing.T) {
	requireRoot(t, "mount leases (a real overlay mount)")
	root := t.TempDir()
	img := tartest.FromV1(t, tartest.Image(t, tartest.New().File("f", tartest.Content("f", 40_000)).Gzip()))
	other := tartest.FromV1(t, tartest.Image(t, tartest.New().File("g", tartest.Content("g", 40_000)).Gzip()))
	ctx := context.Background()
	m := newMaterializer(t, Config{Root: root, Budget: 50_000})
	res, err := m.Materialize(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if err := res.Mount(target); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(target, 0) })
	ml, err := m.RecordMount(res, target, "img")
	if err != nil {
		t.Fatal(err)
	}
	res.Lease.Release()
	if err := m.Cleanup(ctx); err != nil || !m.IsMaterialized(ctx, img) {
		t.Fatalf("cleanup with a mount lease: %v, present %v", err, m.IsMaterialized(ctx, img))
	}
	if _, err := m.ReleaseMount(target); !errors.Is(err, ErrStillMounted) {
		t.Fatalf("release of a live mount: %v, want ErrStillMounted", err)
	}

	// The next process (same root) loads the lease.
	m2 := newMaterializer(t, Config{Root: root, Budget: 50_000})
	if got := m2.Mounts(); len(got) != 1 || got[0].Target != ml.Target || len(got[0].Layers) != 1 {
		t.Fatalf("mounts after reopen: %+v, want %+v", got, ml)
	}
	r2, err := m2.Materialize(ctx, other) // evicts down to the budget
	if err != nil {
		t.Fatal(err)
	}
	r2.Lease.Release()
	if !m2.IsMaterialized(ctx, img) {
		t.Fatal("the budget evicted a layer held by a mount lease")
	}
	if _, err := os.Stat(filepath.Join(target, "f")); err != nil {
		t.Fatalf("mounted view lost its file: %v", err)
	}

	// Unmounted behind its back: the next open drops the lease, and
	// Cleanup takes the layer.
	if err := unix.Unmount(target, 0); err != nil {
		t.Fatal(err)
	}
	m3 := newMaterializer(t, Config{Root: root, Budget: 50_000})
	stale, err := m3.DropStaleMounts()
	if err != nil || len(stale) != 1 || stale[0].Target != ml.Target {
		t.Fatalf("stale leases reported: %+v, %v", stale, err)
	}
	if err := m3.Cleanup(ctx); err != nil || len(m3.Mounts()) != 0 || m3.IsMaterialized(ctx, img) {
		t.Fatalf("after reopen with the mount gone and cleanup (%v): mounts %+v, layer present %v", err, m3.Mounts(), m3.IsMaterialized(ctx, img))
	}
	if _, err := m3.ReleaseMount(target); !errors.Is(err, ErrNoMountLease) {
		t.Fatalf("release without a lease: %v, want ErrNoMountLease", err)
	}
}

// With NoEvict, opening keeps layers over budget and stale leases alike.
func TestNoEvictKeepsEverything(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	var imgs []manifest.Image
	m := newMaterializer(t, Config{Root: root})
	for _, name := range []string{"a", "b"} {
		img := tartest.FromV1(t, tartest.Image(t, tartest.New().File(name, tartest.Content(name, 40_000)).Gzip()))
		res, err := m.Materialize(ctx, img)
		if err != nil {
			t.Fatal(err)
		}
		if name == "a" {
			if _, err := m.RecordMount(res, t.TempDir(), name); err != nil { // not mounted: stale
				t.Fatal(err)
			}
		}
		res.Lease.Release()
		imgs = append(imgs, img)
	}
	ro := newMaterializer(t, Config{Root: root, Budget: 50_000, NoEvict: true})
	for _, img := range imgs {
		if !ro.IsMaterialized(ctx, img) {
			t.Fatal("New with NoEvict evicted a layer")
		}
	}
	if len(ro.Mounts()) != 1 {
		t.Fatalf("New with NoEvict dropped a stale mount lease: %+v", ro.Mounts())
	}
}
