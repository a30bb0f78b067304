package ext4

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/refsig"
	"github.com/strata-oci/strata/materialize/internal/tartest"
	"github.com/strata-oci/strata/tiers/memory"
)

// fleetKey is the signing key the tests' executors share.
var fleetKey = []byte("test fleet key: 32 bytes, shared")

func newConverter(t *testing.T, store blob.Tier) *Converter {
	t.Helper()
	c, err := New(Config{Store: store, WorkDir: t.TempDir(), SigningKey: fleetKey})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func bigStore() *memory.Tier {
	return memory.New(memory.Config{Budget: 1 << 30, MaxBlob: 512 << 20})
}

func sampleImage() *testImage {
	return imageOf(
		tartest.New().Dir("etc").File("etc/a", []byte("a")).File("etc/b", tartest.Content("b", 300_000)).Link("etc/c", "etc/b").Tar(),
		tartest.New().Whiteout("etc/b").File("usr/bin/x", []byte("x")).Tar(),
	)
}

// countRefs counts the refs of the derived namespace in a tier.
func countRefs(t *testing.T, tier blob.Tier) int {
	t.Helper()
	n := 0
	if err := tier.WalkRefs(context.Background(), blob.NamespaceDerived, func(blob.RefKey, blob.Ref) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func countBlobs(t *testing.T, tier blob.Tier) int {
	t.Helper()
	n := 0
	if err := tier.Walk(context.Background(), func(blob.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestMaterializeStoresDerivedBlobAndRef(t *testing.T) {
	store := bigStore()
	c := newConverter(t, store)
	ctx := context.Background()
	img := sampleImage()

	if ok, err := c.IsMaterialized(ctx, img, nil); err != nil || ok {
		t.Fatalf("IsMaterialized before = %v, %v", ok, err)
	}
	res, err := c.Materialize(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.FromCache {
		t.Error("first Materialize reported FromCache")
	}
	fi, err := os.Stat(res.Path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o222 != 0 {
		t.Errorf("result file mode %v is writable", fi.Mode())
	}
	if fi.Size() != res.Size {
		t.Errorf("size %d, Result.Size %d", fi.Size(), res.Size)
	}
	// The stored blob is the image's bytes, under its digest.
	rc, info, err := store.Open(ctx, res.Digest)
	if err != nil {
		t.Fatal(err)
	}
	stored, _ := io.ReadAll(rc)
	rc.Close()
	local, _ := os.ReadFile(res.Path)
	if info.Size != res.Size || string(stored) != string(local) || blob.FromBytes(local) != res.Digest {
		t.Fatalf("stored blob (%d bytes) differs from the local image (%d bytes)", len(stored), len(local))
	}
	// And the ref points at it.
	var refs []blob.Ref
	store.WalkRefs(ctx, blob.NamespaceDerived, func(k blob.RefKey, r blob.Ref) error { refs = append(refs, r); return nil })
	if len(refs) != 1 || refs[0].Digest != res.Digest || refs[0].Size != res.Size || !strings.HasPrefix(refs[0].MediaType, MediaType+refsig.Param) {
		t.Fatalf("refs = %+v", refs)
	}
	e2fsck(t, res.Path)
	if ok, err := c.IsMaterialized(ctx, img, nil); err != nil || !ok {
		t.Fatalf("IsMaterialized after = %v, %v", ok, err)
	}

	// Second call: local, no conversion.
	res2, err := c.Materialize(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res2.FromCache || res2.Path != res.Path || res2.Digest != res.Digest {
		t.Errorf("second result %+v", res2)
	}
	// After Cleanup: the ref is a hit, the blob is downloaded, no conversion.
	if err := c.Cleanup(ctx, img, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(res.Path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after Cleanup: %v", err)
	}
	res3, err := c.Materialize(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(res3.Path)
	if !res3.FromCache || res3.Digest != res.Digest || string(got) != string(local) {
		t.Errorf("after Cleanup: %+v", res3)
	}
	st := c.Stats()
	if st.Conversions != 1 || st.Downloads != 1 || st.LocalHits != 1 {
		t.Errorf("stats %+v, want 1 conversion, 1 download, 1 local hit", st)
	}
}

// TestSecondConverterDownloads: two converters (two executors) with their
// own WorkDir share one store; the second takes the stored image.
func TestSecondConverterDownloads(t *testing.T) {
	store := bigStore()
	ctx := context.Background()
	img := sampleImage()
	a, b := newConverter(t, store), newConverter(t, store)
	ra, err := a.Materialize(ctx, img, &Options{FreeBytes: 64 << 20, FreeInodes: 10})
	if err != nil {
		t.Fatal(err)
	}
	rb, err := b.Materialize(ctx, img, &Options{FreeBytes: 64 << 20, FreeInodes: 10})
	if err != nil {
		t.Fatal(err)
	}
	if a.Stats().Conversions != 1 || b.Stats().Conversions != 0 || b.Stats().Downloads != 1 || !rb.FromCache {
		t.Fatalf("a %+v, b %+v", a.Stats(), b.Stats())
	}
	x, _ := os.ReadFile(ra.Path)
	y, _ := os.ReadFile(rb.Path)
	if string(x) != string(y) || ra.Digest != rb.Digest {
		t.Fatal("downloaded image differs from the converted one")
	}
	e2fsck(t, rb.Path)
	// The download is sparse too: far fewer blocks than its size.
	if alloc := allocated(t, rb.Path); alloc > rb.Size/4 {
		t.Errorf("downloaded image allocates %d of %d bytes: not sparse", alloc, rb.Size)
	}
}

func allocated(t *testing.T, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

func TestFreeSpaceIsSparseAndNotStored(t *testing.T) {
	store := bigStore()
	c := newConverter(t, store)
	ctx := context.Background()
	img := sampleImage()
	small, err := c.Materialize(ctx, img, &Options{})
	if err != nil {
		t.Fatal(err)
	}
	big, err := c.Materialize(ctx, img, &Options{FreeBytes: 1 << 30, FreeInodes: 5000})
	if err != nil {
		t.Fatal(err)
	}
	if c.Stats().Conversions != 1 {
		t.Errorf("free space options caused %d conversions, want 1 (one stored image serves both)", c.Stats().Conversions)
	}
	if small.Digest != big.Digest || small.Path == big.Path {
		t.Errorf("small %+v big %+v", small, big)
	}
	if big.Size < small.Size+(1<<30) {
		t.Errorf("image with 1 GiB free is only %d bytes", big.Size)
	}
	if alloc := allocated(t, big.Path); alloc > 16<<20 {
		t.Errorf("1 GiB of free space allocates %d bytes on disk: not sparse", alloc)
	}
	e2fsck(t, small.Path)
	e2fsck(t, big.Path)
	if n := countBlobs(t, store); n != 1 {
		t.Errorf("store holds %d blobs, want 1", n)
	}
}

func TestConcurrentMaterializeCollapses(t *testing.T) {
	store := bigStore()
	c := newConverter(t, store)
	img := sampleImage()
	const n = 8
	var wg sync.WaitGroup
	results := make([]*Result, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = c.Materialize(context.Background(), img, nil)
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if results[i].Digest != results[0].Digest || results[i].Path != results[0].Path {
			t.Errorf("result %d = %+v, want %+v", i, results[i], results[0])
		}
	}
	if st := c.Stats(); st.Conversions != 1 {
		t.Errorf("%d concurrent calls ran %d conversions, want 1 (stats %+v)", n, st.Conversions, st)
	}
}

// A waiter that gives up does not cancel the shared conversion.
func TestWaiterCancelLeavesConversionAlone(t *testing.T) {
	store := bigStore()
	c := newConverter(t, store)
	gate := make(chan struct{})
	img := &testImage{layers: append(sampleImage().layers, &gatedLayer{rawLayer: rawLayer{data: tartest.New().File("late", []byte("l")).Tar()}, gate: gate})}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := c.Materialize(ctx, img, nil); errc <- err }()
	time.Sleep(50 * time.Millisecond) // let the flight start; correctness does not depend on it
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: err = %v", err)
	}
	close(gate)
	res, err := c.Materialize(context.Background(), img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Stats().Conversions != 1 {
		t.Errorf("conversions = %d, want 1: the cancelled caller's conversion should have finished and been reused", c.Stats().Conversions)
	}
	e2fsck(t, res.Path)
}

type gatedLayer struct {
	rawLayer
	gate chan struct{}
}

func (l *gatedLayer) Open(ctx context.Context) (io.ReadCloser, error) {
	select {
	case <-l.gate:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return l.rawLayer.Open(ctx)
}

func TestFailedConversionLeavesNothing(t *testing.T) {
	tests := []struct {
		desc  string
		img   func() *testImage
		check func(error) bool
	}{
		{
			desc: "a layer read fails mid-way",
			img: func() *testImage {
				big := tartest.New().File("big", tartest.Content("x", 3<<20)).Tar()
				img := sampleImage()
				img.layers = append(img.layers, &rawLayer{data: big, failAfter: 1 << 20})
				return img
			},
			check: func(err error) bool { return errors.Is(err, errInjected) },
		},
		{
			desc: "a layer fails between entries",
			img: func() *testImage {
				raw := tartest.New().File("a", []byte("a")).File("b", []byte("b")).Tar()
				img := sampleImage()
				img.layers = append(img.layers, &rawLayer{data: raw, failAfter: 1024})
				return img
			},
			check: func(err error) bool { return errors.Is(err, errInjected) && !errors.Is(err, ErrInvalidLayer) },
		},
		{
			desc: "a layer blob does not match its digest",
			img: func() *testImage {
				img := sampleImage()
				img.layers = append(img.layers, &corruptLayer{rawLayer{data: tartest.New().File("a", []byte("a")).Tar()}})
				return img
			},
			check: func(err error) bool { return errors.Is(err, blob.ErrMismatch) },
		},
		{
			desc: "a layer is not a tar",
			img: func() *testImage {
				img := sampleImage()
				img.layers = append(img.layers, &rawLayer{data: []byte("this is not a tar archive, not at all, no, it is definitely something else entirely; long enough to fill a header block? no")})
				return img
			},
			check: func(err error) bool { return errors.Is(err, ErrInvalidLayer) },
		},
		{
			desc: "the writer rejects the stream (a name longer than 255 bytes)",
			img: func() *testImage {
				long := ""
				for range 300 {
					long += "n"
				}
				return imageOf(tartest.New().File(long, []byte("x")).Tar())
			},
			check: func(err error) bool { return err != nil },
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			store := bigStore()
			c := newConverter(t, store)
			_, err := c.Materialize(context.Background(), tc.img(), nil)
			if err == nil || !tc.check(err) {
				t.Fatalf("err = %v", err)
			}
			if n := countBlobs(t, store); n != 0 {
				t.Errorf("%d blobs stored", n)
			}
			if n := countRefs(t, store); n != 0 {
				t.Errorf("%d refs stored", n)
			}
			for _, d := range []string{"images", "tmp"} {
				ents, _ := osReadDir(filepath.Join(c.cfg.WorkDir, d))
				if len(ents) != 0 {
					t.Errorf("%s holds %v", d, ents)
				}
			}
			if st := c.Stats(); st.Conversions != 1 || st.ConversionFailures != 1 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// A ref whose blob is gone (evicted) leads to a new conversion, not an error.
func TestRefWithoutBlobConvertsAgain(t *testing.T) {
	store := bigStore()
	c := newConverter(t, store)
	ctx := context.Background()
	img := sampleImage()
	res, err := c.Materialize(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Delete(ctx, res.Digest); err != nil {
		t.Fatal(err)
	}
	if err := c.Cleanup(ctx, img, nil); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.IsMaterialized(ctx, img, nil); ok {
		t.Error("IsMaterialized with a dangling ref")
	}
	res2, err := c.Materialize(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res2.Digest != res.Digest || c.Stats().Conversions != 2 {
		t.Errorf("digest %s vs %s (conversion must be deterministic), conversions %d", res2.Digest, res.Digest, c.Stats().Conversions)
	}
}

// A store that declines the image (too large) still yields a local image.
func TestStoreTooLargeStillMaterializes(t *testing.T) {
	store := memory.New(memory.Config{MaxBlob: 1024})
	c := newConverter(t, store)
	res, err := c.Materialize(context.Background(), sampleImage(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if countRefs(t, store) != 0 || countBlobs(t, store) != 0 {
		t.Error("a ref or blob was stored although the store declined the blob")
	}
	e2fsck(t, res.Path)
}

func TestNewValidatesConfig(t *testing.T) {
	tests := []struct {
		desc string
		cfg  Config
	}{
		{"no store", Config{WorkDir: t.TempDir()}},
		{"no work dir", Config{Store: memory.New(memory.Config{})}},
		{"negative free bytes", Config{Store: memory.New(memory.Config{}), WorkDir: t.TempDir(), FreeBytes: -1}},
	}
	for _, tc := range tests {
		if _, err := New(tc.cfg); err == nil {
			t.Errorf("%s: New succeeded", tc.desc)
		}
	}
	c := newConverter(t, memory.New(memory.Config{}))
	if _, err := c.Materialize(context.Background(), sampleImage(), &Options{FreeInodes: -1}); err == nil {
		t.Error("negative FreeInodes accepted")
	}
}

func TestMetricsCountOutcomes(t *testing.T) {
	reg := prometheus.NewRegistry()
	store := bigStore()
	c, err := New(Config{Store: store, WorkDir: t.TempDir(), Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	img := sampleImage()
	for range 2 {
		if _, err := c.Materialize(ctx, img, nil); err != nil {
			t.Fatal(err)
		}
	}
	bad := imageOf([]byte("not a tar archive at all, and long enough to be read as a header? no"))
	if _, err := c.Materialize(ctx, bad, nil); err == nil {
		t.Fatal("bad image converted")
	}
	for outcome, want := range map[string]float64{"converted": 1, "local": 1, "failed": 1, "downloaded": 0} {
		if got := testutil.ToFloat64(c.mOutcome.WithLabelValues(outcome)); got != want {
			t.Errorf("outcome %s = %v, want %v", outcome, got, want)
		}
	}
	if n, err := testutil.GatherAndCount(reg, "strata_ext4_materialize_total", "strata_ext4_converted_bytes_total"); err != nil || n == 0 {
		t.Errorf("registered metrics: %d, %v", n, err)
	}
	// A second converter on the same registry is refused, not silently
	// unregistered.
	if _, err := New(Config{Store: store, WorkDir: t.TempDir(), Metrics: reg}); err == nil {
		t.Error("duplicate registration accepted")
	}
}

// corruptLayer serves bytes that differ from its digest.
type corruptLayer struct{ rawLayer }

func (l *corruptLayer) Open(ctx context.Context) (io.ReadCloser, error) {
	bad := bytes.Clone(l.data)
	bad[len(bad)-1] ^= 1
	return blob.NewVerifier(bytes.NewReader(bad), l.Digest(), l.Size(), nil), nil
}

func TestNewRemovesStaleTemporaries(t *testing.T) {
	dir := t.TempDir()
	tmp := filepath.Join(dir, "tmp")
	os.MkdirAll(tmp, 0o755)
	old, fresh := filepath.Join(tmp, "convert-old.ext4"), filepath.Join(tmp, "convert-fresh.ext4")
	os.WriteFile(old, []byte("x"), 0o644)
	os.WriteFile(fresh, []byte("x"), 0o644)
	past := time.Now().Add(-48 * time.Hour)
	os.Chtimes(old, past, past)
	if _, err := New(Config{Store: memory.New(memory.Config{}), WorkDir: dir}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale temporary kept: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("fresh temporary removed: %v", err)
	}
}

// A ref that points at a blob which is not an ext4 image (a foreign or
// damaged entry in a shared cache) leads to a conversion that replaces it.
func TestRefToForeignBlobConvertsAgain(t *testing.T) {
	store := bigStore()
	c := newConverter(t, store)
	ctx := context.Background()
	img := sampleImage()
	junk := bytes.Repeat([]byte("not an ext4 image "), 1000)
	d := blob.FromBytes(junk)
	if err := store.Put(ctx, d, int64(len(junk)), bytes.NewReader(junk)); err != nil {
		t.Fatal(err)
	}
	dv, err := c.derive(img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.PutRef(ctx, dv.key, blob.Ref{Digest: d, Size: int64(len(junk)), MediaType: MediaType}); err != nil {
		t.Fatal(err)
	}
	res, err := c.Materialize(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Digest == d || c.Stats().Conversions != 1 {
		t.Fatalf("result %+v, stats %+v", res, c.Stats())
	}
	ref, err := store.GetRef(ctx, dv.key)
	if err != nil || ref.Digest != res.Digest {
		t.Fatalf("ref after conversion: %+v, %v", ref, err)
	}
	e2fsck(t, res.Path)
}

func TestEmptyImage(t *testing.T) {
	c := newConverter(t, bigStore())
	res, err := c.Materialize(context.Background(), &testImage{}, &Options{FreeBytes: 1 << 20, FreeInodes: 10})
	if err != nil {
		t.Fatal(err)
	}
	e2fsck(t, res.Path)
}

// A derivation ref is followed only if it is signed with the converter's
// key: a ref forged in a shared tier, or written by an executor with
// another key, is treated as a miss and the image is converted again.
func TestUnsignedOrForeignRefIsNotFollowed(t *testing.T) {
	ctx := context.Background()
	img := sampleImage()
	for _, tc := range []struct {
		desc  string
		forge func(t *testing.T, store blob.Tier, k blob.RefKey, good blob.Ref) blob.Ref
	}{
		{"unsigned ref to another image", func(t *testing.T, store blob.Tier, k blob.RefKey, good blob.Ref) blob.Ref {
			evil := []byte("not the image you asked for")
			d := blob.FromBytes(evil)
			if err := store.Put(ctx, d, int64(len(evil)), bytes.NewReader(evil)); err != nil {
				t.Fatal(err)
			}
			return blob.Ref{Digest: d, Size: int64(len(evil)), MediaType: MediaType}
		}},
		{"valid ref re-signed by another key", func(t *testing.T, store blob.Tier, k blob.RefKey, good blob.Ref) blob.Ref {
			other, err := New(Config{Store: store, WorkDir: t.TempDir(), SigningKey: []byte("someone else's key")})
			if err != nil {
				t.Fatal(err)
			}
			return other.signedRef(k, good.Digest, good.Size)
		}},
		{"signature copied onto another digest", func(t *testing.T, store blob.Tier, k blob.RefKey, good blob.Ref) blob.Ref {
			evil := []byte("still not the image")
			d := blob.FromBytes(evil)
			store.Put(ctx, d, int64(len(evil)), bytes.NewReader(evil))
			return blob.Ref{Digest: d, Size: int64(len(evil)), MediaType: good.MediaType}
		}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			store := bigStore()
			a := newConverter(t, store)
			if _, err := a.Materialize(ctx, img, nil); err != nil {
				t.Fatal(err)
			}
			var key blob.RefKey
			var good blob.Ref
			store.WalkRefs(ctx, blob.NamespaceDerived, func(k blob.RefKey, r blob.Ref) error { key, good = k, r; return nil })
			if err := store.PutRef(ctx, key, tc.forge(t, store, key, good)); err != nil {
				t.Fatal(err)
			}
			b := newConverter(t, store)
			if ok, err := b.IsMaterialized(ctx, img, nil); err != nil || ok {
				t.Fatalf("IsMaterialized with a forged ref = %v, %v; want false", ok, err)
			}
			res, err := b.Materialize(ctx, img, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.FromCache || b.Stats().Conversions != 1 || res.Digest != good.Digest {
				t.Fatalf("forged ref followed: %+v, stats %+v; want a fresh conversion to %s", res, b.Stats(), good.Digest)
			}
		})
	}
}

// Prune keeps images whose derivation ref still verifies and removes the
// rest: a ref gone from the store, and an image without its sidecar.
func TestPruneRemovesUnreferencedImages(t *testing.T) {
	ctx := context.Background()
	store := bigStore()
	c := newConverter(t, store)
	res, err := c.Materialize(ctx, sampleImage(), nil)
	if err != nil {
		t.Fatal(err)
	}
	stray := filepath.Join(filepath.Dir(res.Path), "stray.ext4")
	if err := os.WriteFile(stray, []byte("left by a crash"), 0o600); err != nil {
		t.Fatal(err)
	}
	if n, _, err := c.Prune(ctx); err != nil || n != 1 {
		t.Fatalf("Prune with the ref in place = %d, %v; want only the stray file removed", n, err)
	}
	if _, err := os.Stat(res.Path); err != nil {
		t.Fatalf("referenced image removed: %v", err)
	}
	if _, err := os.Stat(stray); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stray image kept: %v", err)
	}
	var key blob.RefKey
	store.WalkRefs(ctx, blob.NamespaceDerived, func(k blob.RefKey, _ blob.Ref) error { key = k; return nil })
	if err := store.DeleteRef(ctx, key); err != nil {
		t.Fatal(err)
	}
	n, freed, err := c.Prune(ctx)
	if err != nil || n != 1 || freed != res.Size {
		t.Fatalf("Prune after the ref went = %d images, %d bytes, %v; want 1, %d", n, freed, err, res.Size)
	}
	if ok, _ := c.IsMaterialized(ctx, sampleImage(), nil); ok {
		t.Fatal("image still materialized after Prune")
	}
}
