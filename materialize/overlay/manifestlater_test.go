package overlay

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// holdManifests makes every writeManifestLater wait, once started, until
// the returned release is called (also at cleanup).
func holdManifests(t *testing.T) (release func()) {
	t.Helper()
	ch := make(chan struct{})
	var released bool
	release = func() {
		if !released {
			released = true
			close(ch)
		}
	}
	// The test's end lets them go too, before its cleanups (which close
	// the materializer, waiting for them) run.
	ended := t.Context().Done()
	manifestHook = func(blob.Digest) {
		select {
		case <-ch:
		case <-ended:
		}
	}
	t.Cleanup(func() {
		release()
		manifestHook = nil
	})
	return release
}

// entryOf returns the index entry of d (nil if none) and, if it has one,
// the channel closed when its manifest is done.
func entryOf(m *Materializer, d blob.Digest) (*layerEntry, chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.layers[d]
	if e == nil {
		return nil, nil
	}
	return e, e.manifestDone
}

// TestMaterializeReturnsBeforeManifest: the layer's manifest walk is not on
// the path of Materialize. With it held, Materialize returns and the layer
// is usable; Verify waits for the manifest (here its ctx ends first); once
// the walk runs, the manifest is in place and the layer verifies.
func TestMaterializeReturnsBeforeManifest(t *testing.T) {
	ctx := context.Background()
	release := holdManifests(t)
	m := newMaterializer(t, Config{})
	img := tartest.FromV1(t, tartest.Image(t, verifyLayer()))
	d := img.Layers()[0].Digest()
	res, err := m.Materialize(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Lease.Release()
	if b, err := os.ReadFile(filepath.Join(res.LowerDirs[0], "etc/passwd")); err != nil || len(b) == 0 {
		t.Fatalf("layer not usable while its manifest is pending: %q, %v", b, err)
	}
	if _, err := os.Lstat(m.manifestPath(d.Encoded())); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("manifest in place while its walk is held: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := m.Verify(cctx, d, false); !errors.Is(err, context.Canceled) {
		t.Fatalf("Verify with the manifest pending and ctx done = %v; want it to wait (context.Canceled)", err)
	}
	release()
	chk, err := m.Verify(ctx, d, false)
	if err != nil || chk.Status != LayerOK {
		t.Fatalf("Verify once the manifest is written = %+v, %v; want ok", chk, err)
	}
	if _, err := os.Lstat(m.manifestPath(d.Encoded())); err != nil {
		t.Fatalf("no manifest after Verify waited for it: %v", err)
	}
	if ents, _ := filepath.Glob(m.manifestPath(d.Encoded()) + ".*"); len(ents) != 0 {
		t.Errorf("temporary manifests left: %v", ents)
	}
}

// TestLayerChangedBeforeItsManifest: a change made to a layer directory
// after Materialize returned but before its manifest was written is not
// recorded as the layer's state: the walk sees the entry's ctime after
// the commit and takes the layer out of service (quarantined while the
// caller's lease holds it, removed when it goes), and the next
// Materialize extracts it again.
func TestLayerChangedBeforeItsManifest(t *testing.T) {
	ctx := context.Background()
	for _, tt := range tampers() {
		t.Run(tt.desc, func(t *testing.T) {
			release := holdManifests(t)
			m := newMaterializer(t, Config{})
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
			waitClockPast(t, e.committed)
			dir := res.LowerDirs[0]
			tt.tamper(t, dir)
			release()
			<-done

			if now, _ := entryOf(m, d); now != nil {
				t.Fatal("a layer changed before its manifest was written is still in service")
			}
			if got := testutil.ToFloat64(m.met.extractions.WithLabelValues("changed")); got != 1 {
				t.Errorf("extractions{result=changed} = %v, want 1", got)
			}
			if _, err := os.Lstat(m.manifestPath(d.Encoded())); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a manifest was written for the changed layer: %v", err)
			}
			res.Lease.Release() // the last lease: the quarantined directory goes
			m.Close()           // waits for that removal
			if es, _ := os.ReadDir(m.path("tmp")); len(es) != 0 {
				t.Errorf("tmp/ holds %d entries after the quarantined layer's lease went", len(es))
			}

			m = newMaterializer(t, Config{Root: m.cfg.Root})
			before := extractions(m)
			res, err = m.Materialize(ctx, img)
			if err != nil {
				t.Fatal(err)
			}
			res.Lease.Release()
			if extractions(m) != before+1 {
				t.Fatal("the changed layer was not extracted again")
			}
			if chk, err := m.Verify(ctx, d, false); err != nil || chk.Status != LayerOK {
				t.Fatalf("Verify of the layer extracted again = %+v, %v; want ok", chk, err)
			}
		})
	}
}

// waitClockPast returns once the kernel's file timestamps (its coarse
// clock, which lags the wall clock by up to a tick) are later than at:
// then a change made from here on has a ctime after at. It polls a file's
// ctime, touching it; it fails the test after ten seconds instead of
// hanging.
func waitClockPast(t *testing.T, at time.Time) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "clock")
	deadline := time.Now().Add(10 * time.Second)
	for mode := os.FileMode(0o600); ; mode ^= 0o200 {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Ctim.Nano() > at.UnixNano() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("file timestamps still at or before %s after ten seconds", at)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestManifestWaitsForExtractions: a layer's manifest walk does not run
// while another extraction is in flight (it would take the CPU and disk
// that extraction's callers wait for): it waits until none is, then
// writes the manifest; it waits manifestYield at most; and a layer
// dropped meanwhile ends the wait (Cleanup, which waits for the manifests
// of the layers it drops, does not wait for the other extraction).
func TestManifestWaitsForExtractions(t *testing.T) {
	for _, mode := range []string{"until-quiet", "bounded", "dropped"} {
		bounded := mode == "bounded"
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			waiting := make(chan struct{}, 8)
			awaitHook = func() { waiting <- struct{}{} }
			old := manifestYield
			manifestYield = time.Hour
			if bounded {
				manifestYield = time.Millisecond
			}
			t.Cleanup(func() { awaitHook, manifestYield = nil, old })
			m := newMaterializer(t, Config{})

			gate := make(chan struct{})
			var once bool
			open := func() {
				if !once {
					once = true
					close(gate)
				}
			}
			t.Cleanup(open)
			slow := gatedImageOf(tartest.FromV1(t, tartest.Image(t, tartest.New().File("slow", []byte("s")).Gzip())), gate)
			slowDone := make(chan error, 1)
			go func() {
				res, err := m.Materialize(ctx, slow)
				if err == nil {
					res.Lease.Release()
				}
				slowDone <- err
			}()
			waitFor(t, func() bool { m.mu.Lock(); defer m.mu.Unlock(); return len(m.flights) == 1 })

			img := tartest.FromV1(t, tartest.Image(t, verifyLayer()))
			d := img.Layers()[0].Digest()
			res, err := m.Materialize(ctx, img)
			if err != nil {
				t.Fatal(err)
			}
			<-waiting // the walk found an extraction in flight
			_, done := entryOf(m, d)
			if mode == "dropped" {
				res.Lease.Release()
				cctx, cancel := context.WithTimeout(ctx, time.Minute) // a hang fails, not a speed
				defer cancel()
				if err := m.Cleanup(cctx, img); err != nil {
					t.Fatalf("Cleanup of the layer whose manifest waits: %v", err)
				}
				select {
				case <-done:
				default:
					t.Fatal("Cleanup returned before the dropped layer's manifest writer ended")
				}
				if es, _ := os.ReadDir(m.path("meta")); len(es) != 0 {
					t.Fatalf("meta/ holds %d entries after the layer was dropped", len(es))
				}
				open()
				if err := <-slowDone; err != nil {
					t.Fatal(err)
				}
				return
			}
			defer res.Lease.Release()
			if !bounded {
				select {
				case <-done:
					t.Fatal("the manifest was written while another extraction was in flight")
				default:
				}
				if _, err := os.Lstat(m.manifestPath(d.Encoded())); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("manifest in place while another extraction is in flight: %v", err)
				}
				open()
			}
			<-done // bounded: written although the other extraction still runs
			chk, err := m.Verify(ctx, d, false)
			if err != nil || chk.Status != LayerOK {
				t.Fatalf("Verify = %+v, %v; want ok", chk, err)
			}
			open()
			if err := <-slowDone; err != nil {
				t.Fatal(err)
			}
		})
	}
}
