package overlay

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// verifyLayer is a layer with a bit of everything the manifest records.
func verifyLayer() []byte {
	return tartest.New().
		Dir("etc", tartest.Mode(0o755)).
		File("etc/passwd", []byte("root:x:0:0::/root:/bin/sh\n"), tartest.Mode(0o644)).
		File("etc/big", tartest.Content("big", 300_000)).
		Link("etc/big-link", "etc/big").
		Symlink("etc/sh", "/bin/sh").
		Dir("empty").
		File("sp ace\nname", []byte("odd name")).
		Whiteout("gone").
		Opaque("etc").
		Gzip()
}

// tamperCase is a change made to an extracted layer behind the
// materializer's back, and what Verify reports for it.
type tamperCase struct {
	desc   string
	tamper func(t *testing.T, dir string)
	want   string // in the differences
}

func tampers() []tamperCase {
	return []tamperCase{
		{"a file's content modified", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "etc/passwd"), "root::0:0::/root:/bin/sh\n")
		}, "modified etc/passwd: size, content"},
		{"a byte of a large file flipped, size kept", func(t *testing.T, dir string) {
			f, err := os.OpenFile(filepath.Join(dir, "etc/big"), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte{'!'}, 150_000); err != nil {
				t.Fatal(err)
			}
		}, "modified etc/big: content"},
		{"a file added", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "etc/shadow"), "root:$1$evil:::::::\n")
		}, "added etc/shadow"},
		{"a file removed", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "etc/passwd")); err != nil {
				t.Fatal(err)
			}
		}, "removed etc/passwd"},
		{"a file made setuid", func(t *testing.T, dir string) {
			if err := os.Chmod(filepath.Join(dir, "etc/passwd"), 0o4755); err != nil {
				t.Fatal(err)
			}
		}, "modified etc/passwd: mode"},
		{"a symlink retargeted", func(t *testing.T, dir string) {
			p := filepath.Join(dir, "etc/sh")
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("/tmp/evil", p); err != nil {
				t.Fatal(err)
			}
		}, "modified etc/sh: link target"},
		{"an empty directory removed", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "empty")); err != nil {
				t.Fatal(err)
			}
		}, "removed empty"},
	}
}

// TestVerifyDetectsTampering: each kind of change to an extracted layer is
// reported, the layer is dropped, and the next Materialize extracts it
// again, identical.
func TestVerifyDetectsTampering(t *testing.T) {
	ctx := context.Background()
	for _, tt := range tampers() {
		t.Run(tt.desc, func(t *testing.T) {
			m := newMaterializer(t, Config{})
			img := tartest.FromV1(t, tartest.Image(t, verifyLayer()))
			d := img.Layers()[0].Digest()
			res, err := m.Materialize(ctx, img)
			if err != nil {
				t.Fatal(err)
			}
			res.Lease.Release()
			if chk, err := m.Verify(ctx, d, false); err != nil || chk.Status != LayerOK || len(chk.Differences) != 0 {
				t.Fatalf("Verify of an untouched layer = %+v, %v; want ok", chk, err)
			}
			dir := res.LowerDirs[0]
			before, err := tartest.Snapshot(dir)
			if err != nil {
				t.Fatal(err)
			}
			tt.tamper(t, dir)

			chk, err := m.Verify(ctx, d, false)
			if err != nil {
				t.Fatal(err)
			}
			if chk.Status != LayerModified || !chk.Removed || chk.Leased {
				t.Fatalf("Verify of a tampered layer = %+v; want modified and removed", chk)
			}
			if !strings.Contains(strings.Join(chk.Differences, "\n"), tt.want) {
				t.Errorf("differences %q lack %q", chk.Differences, tt.want)
			}
			if m.IsMaterialized(ctx, img) {
				t.Fatal("the tampered layer is still indexed")
			}
			if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the tampered layer directory is still there: %v", err)
			}
			if _, err := os.Lstat(m.manifestPath(d.Encoded())); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the tampered layer's manifest is still there: %v", err)
			}

			before2 := extractions(m)
			res, err = m.Materialize(ctx, img)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Lease.Release()
			if extractions(m) != before2+1 {
				t.Errorf("Materialize after the drop did not extract again")
			}
			after, err := tartest.Snapshot(res.LowerDirs[0])
			if err != nil {
				t.Fatal(err)
			}
			if d := tartest.Diff(before, after); d != nil {
				t.Errorf("re-extracted layer differs from the first extraction:\n%s", strings.Join(d, "\n"))
			}
			if chk, err := m.Verify(ctx, img.Layers()[0].Digest(), false); err != nil || chk.Status != LayerOK {
				t.Errorf("Verify of the re-extracted layer = %+v, %v; want ok", chk, err)
			}
		})
	}
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyLeasedAndUnverifiable: a modified layer held by a lease is
// reported and kept; a layer without a manifest is unverifiable, kept
// unless asked to remove it; manifests survive a reopen. The layer is
// tampered with after its manifest is written (Verify finds the change) or
// before (the manifest's walk finds it): Verify reports the same.
func TestVerifyLeasedAndUnverifiable(t *testing.T) {
	for _, beforeManifest := range []bool{false, true} {
		name := map[bool]string{false: "tampered after the manifest", true: "tampered before the manifest"}[beforeManifest]
		t.Run(name, func(t *testing.T) { testVerifyLeasedAndUnverifiable(t, beforeManifest) })
	}
}

func testVerifyLeasedAndUnverifiable(t *testing.T, beforeManifest bool) {
	ctx := context.Background()
	root := t.TempDir()
	release := holdManifests(t)
	m := newMaterializer(t, Config{Root: root})
	img := tartest.FromV1(t, tartest.Image(t, verifyLayer()))
	d := img.Layers()[0].Digest()
	res, err := m.Materialize(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	e, done := entryOf(m, d)
	if e == nil || done == nil {
		t.Fatal("no entry with a pending manifest after Materialize")
	}
	if beforeManifest {
		waitClockPast(t, e.committed)
	} else {
		release()
		<-done
	}
	writeFile(t, filepath.Join(res.LowerDirs[0], "etc/passwd"), "changed")
	var chk LayerCheck
	if beforeManifest {
		// Verify takes the layer while its manifest is pending, then the
		// walk finds the change.
		waiting := make(chan struct{})
		verifyWaitHook = func(blob.Digest) { close(waiting) }
		t.Cleanup(func() { verifyWaitHook = nil })
		verified := make(chan error, 1)
		go func() {
			var err error
			chk, err = m.Verify(ctx, d, false)
			verified <- err
		}()
		<-waiting
		verifyWaitHook = nil
		release()
		err = <-verified
	} else {
		chk, err = m.Verify(ctx, d, false)
	}
	if err != nil || chk.Status != LayerModified || !chk.Removed || !chk.Leased {
		t.Fatalf("Verify of a leased tampered layer = %+v, %v; want modified, leased, out of service", chk, err)
	}
	// Out of service at once: no new caller gets the tampered directory,
	// while the lease holder (its mount) still sees it.
	if _, err := m.Verify(ctx, d, false); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Verify of a layer out of service = %v, want ErrNotFound", err)
	}
	res2, err := m.Materialize(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(res2.LowerDirs[0], "etc/passwd")); err != nil || string(got) == "changed" {
		t.Fatalf("a new caller got the tampered layer (%q, %v)", got, err)
	}
	res2.Lease.Release()
	quarantined := func() int {
		ents, _ := os.ReadDir(filepath.Join(root, "tmp"))
		return len(ents)
	}
	if quarantined() == 0 {
		t.Fatal("the leased tampered directory was removed under its lease")
	}
	res.Lease.Release()
	m.Close() // waits for the removal the last release started
	if n := quarantined(); n != 0 {
		t.Fatalf("%d entries left in tmp/ after the last lease of the tampered layer went", n)
	}
	m = newMaterializer(t, Config{Root: root})

	// Extracted again; the manifest survives a reopen of the root.
	res, err = m.Materialize(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	res.Lease.Release()
	m.Close()
	m = newMaterializer(t, Config{Root: root})
	if chk, err := m.Verify(ctx, d, false); err != nil || chk.Status != LayerOK {
		t.Fatalf("Verify after reopening = %+v, %v; want ok", chk, err)
	}

	// A layer extracted before manifests existed.
	if err := os.Remove(m.manifestPath(d.Encoded())); err != nil {
		t.Fatal(err)
	}
	for _, remove := range []bool{false, true} {
		chk, err := m.Verify(ctx, d, remove)
		if err != nil || chk.Status != LayerUnverifiable || chk.Removed != remove {
			t.Fatalf("Verify(remove=%v) without a manifest = %+v, %v; want unverifiable, removed %v", remove, chk, err, remove)
		}
	}
	if m.IsMaterialized(ctx, img) {
		t.Error("an unverifiable layer stayed after Verify with remove")
	}
}

// TestVerifyAllFixtures: every fixture layer verifies as extracted (no
// false alarm from whiteouts, opaque dirs, devices, hard links, xattrs).
func TestVerifyAllFixtures(t *testing.T) {
	ctx := context.Background()
	m := newMaterializer(t, Config{})
	for _, f := range tartest.Fixtures() {
		t.Run(f.Name, func(t *testing.T) {
			img := tartest.FromV1(t, f.Image(t))
			res, err := m.Materialize(ctx, img)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Lease.Release()
			for _, l := range img.Layers() {
				chk, err := m.Verify(ctx, l.Digest(), false)
				if err != nil || chk.Status != LayerOK {
					t.Errorf("layer %s: %+v, %v; want ok", l.Digest(), chk, err)
				}
			}
		})
	}
}

// TestImageCap: the layers of one image together may not exceed
// MaxImageBytes or MaxImageEntries, counted while extracting (layers in
// parallel) and for reused layers by their recorded size; the failure is
// not remembered against the layers.
func TestImageCap(t *testing.T) {
	ctx := context.Background()
	l1 := bigFileLayer(t, "one", 3<<20, 'a')
	l2 := bigFileLayer(t, "two", 3<<20, 'b')
	l3 := bigFileLayer(t, "three", 3<<20, 'c')
	manyFiles := func(prefix string) []byte {
		b := tartest.New()
		for i := range 20 {
			b.File(prefix+string(rune('a'+i)), []byte("x"))
		}
		return b.Gzip()
	}
	m1, m2 := manyFiles("p"), manyFiles("q")
	img := func(layers ...[]byte) manifest.Image { return tartest.FromV1(t, tartest.Image(t, layers...)) }
	tests := []struct {
		desc    string
		cfg     Config
		prime   [][]byte // extracted first, by an image of their own
		layers  [][]byte
		wantErr bool
	}{
		{"three layers of 3 MiB under 8 MiB", Config{MaxImageBytes: 8 << 20}, nil, [][]byte{l1, l2, l3}, true},
		{"two layers of 3 MiB under 8 MiB", Config{MaxImageBytes: 8 << 20}, nil, [][]byte{l1, l2}, false},
		{"reused layers count their size", Config{MaxImageBytes: 8 << 20}, [][]byte{l1, l2}, [][]byte{l1, l2, l3}, true},
		{"all reused, over the cap", Config{MaxImageBytes: 8 << 20}, [][]byte{l1, l2, l3}, [][]byte{l1, l2, l3}, true},
		{"negative: no bound", Config{MaxImageBytes: -1}, nil, [][]byte{l1, l2, l3}, false},
		{"entries over the cap", Config{MaxImageEntries: 30}, nil, [][]byte{m1, m2}, true},
		{"entries within the cap", Config{MaxImageEntries: 40}, nil, [][]byte{m1, m2}, false},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			m := newMaterializer(t, tt.cfg)
			for _, p := range tt.prime {
				res, err := m.Materialize(ctx, img(p))
				if err != nil {
					t.Fatal(err)
				}
				res.Lease.Release()
			}
			stop := peakUsage(m.path("layers"))
			res, err := m.Materialize(ctx, img(tt.layers...))
			peak := stop()
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("Materialize = %v, want success", err)
				}
				res.Lease.Release()
				return
			}
			if !errors.Is(err, ErrBudgetExceeded) || !errors.Is(err, ErrLimitExceeded) {
				t.Fatalf("Materialize = %v, want ErrBudgetExceeded", err)
			}
			if tt.cfg.MaxImageBytes > 0 && peak > tt.cfg.MaxImageBytes+2<<20 {
				t.Errorf("layers took %d bytes during the failed call, cap %d", peak, tt.cfg.MaxImageBytes)
			}
			if u := m.Usage(); u.Leased != 0 {
				t.Errorf("%d layers leased after a failed call", u.Leased)
			}
			// Not remembered per layer: each layer alone still extracts.
			for _, l := range tt.layers {
				res, err := m.Materialize(ctx, img(l))
				if err != nil {
					t.Fatalf("a layer of the refused image, alone: %v", err)
				}
				res.Lease.Release()
			}
		})
	}
}

// TestRootlessVerify: without privilege, a layer with directories this
// user may not list and files it may not read verifies without a false
// alarm (their content is counted unreadable), and a tampered one is
// still found and dropped.
func TestRootlessVerify(t *testing.T) {
	if !unprivilegedChild(t) {
		runAsNobody(t, t.Name())
		return
	}
	ctx := context.Background()
	m := newMaterializer(t, Config{})
	layer := tartest.New().
		Dir("usr/bin", tartest.Mode(0o555)).File("usr/bin/ls", []byte("ls"), tartest.Mode(0o755)).
		File("secret", []byte("s"), tartest.Mode(0o000)).
		Dir("locked", tartest.Mode(0o000)).File("locked/f", []byte("f")).Tar()
	img := tartest.FromV1(t, tartest.Image(t, layer))
	d := img.Layers()[0].Digest()
	res, err := m.Materialize(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	res.Lease.Release()
	chk, err := m.Verify(ctx, d, false)
	if err != nil || chk.Status != LayerOK || chk.Unreadable != 1 {
		t.Fatalf("Verify = %+v, %v; want ok with 1 unreadable file", chk, err)
	}
	if err := os.Chmod(filepath.Join(res.LowerDirs[0], "usr/bin/ls"), 0o4777); err != nil {
		t.Fatal(err)
	}
	chk, err = m.Verify(ctx, d, false)
	if err != nil || chk.Status != LayerModified || !chk.Removed {
		t.Fatalf("Verify of a tampered layer = %+v, %v; want modified and removed", chk, err)
	}
}
