package overlay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/internal/testenv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// requireRoot skips a test that needs root, or fails it under CI=true.
func requireRoot(t testing.TB, what string) {
	t.Helper()
	testenv.RequireRoot(t, what)
}

func newMaterializer(t testing.TB, cfg Config) *Materializer {
	t.Helper()
	if cfg.Root == "" {
		cfg.Root = t.TempDir()
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Before the root goes: the background manifest writers end.
	t.Cleanup(func() { m.Close() })
	return m
}

// mount mounts res read-only at a new directory and unmounts it at cleanup.
func mount(t testing.TB, res *Result) string {
	t.Helper()
	target := t.TempDir()
	if err := res.Mount(target); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(target, 0); err != nil {
			t.Errorf("unmount %s: %v", target, err)
		}
	})
	return target
}

func extractions(m *Materializer) float64 {
	return testutil.ToFloat64(m.met.extractions.WithLabelValues("ok"))
}

func TestFidelity(t *testing.T) {
	requireRoot(t, "the overlay fidelity test (mknod, chown, trusted xattrs, mount -t overlay)")
	for _, mode := range []struct {
		desc      string
		userXattr bool
		opaque    string
	}{
		{"trusted xattrs", false, "trusted.overlay.opaque"},
		{"user xattrs with userxattr", true, "user.overlay.opaque"},
	} {
		t.Run(mode.desc, func(t *testing.T) {
			m := newMaterializer(t, Config{UserXattr: mode.userXattr})
			for _, f := range tartest.Fixtures() {
				t.Run(f.Name, func(t *testing.T) {
					img := f.Image(t)
					want, err := tartest.Expected(img)
					if err != nil {
						t.Fatal(err)
					}
					res, err := m.Materialize(context.Background(), tartest.FromV1(t, img))
					if err != nil {
						t.Fatal(err)
					}
					defer res.Lease.Release()
					if mode.userXattr != strings.Contains(res.MountOptions, "userxattr") {
						t.Errorf("MountOptions %q", res.MountOptions)
					}
					got, err := tartest.Snapshot(mount(t, res))
					if err != nil {
						t.Fatal(err)
					}
					if d := tartest.Diff(want, got); d != nil {
						t.Errorf("%s: merged tree differs from the flattened image:\n%s", f.Description, strings.Join(d, "\n"))
					}
				})
			}
			t.Run("raw layer form", func(t *testing.T) {
				img := tartest.Image(t,
					tartest.New().Dir("o").File("o/a", nil).File("gone", nil).Gzip(),
					tartest.New().Dir("o").Opaque("o").Whiteout("gone").Gzip())
				res, err := m.Materialize(context.Background(), tartest.FromV1(t, img))
				if err != nil {
					t.Fatal(err)
				}
				defer res.Lease.Release()
				top, err := tartest.Snapshot(res.LowerDirs[0])
				if err != nil {
					t.Fatal(err)
				}
				if n := top["gone"]; n.Type != tartest.TypeChar || n.Major != 0 || n.Minor != 0 {
					t.Errorf("whiteout is %+v, want a 0:0 character device", n)
				}
				if _, ok := top[".wh.gone"]; ok {
					t.Errorf("OCI whiteout marker left in the layer dir")
				}
				buf := make([]byte, 8)
				n, err := unix.Lgetxattr(filepath.Join(res.LowerDirs[0], "o"), mode.opaque, buf)
				if err != nil || string(buf[:n]) != "y" {
					t.Errorf("%s on o = %q, %v; want y", mode.opaque, buf[:n], err)
				}
			})
		})
	}
}

func TestManyLayersMount(t *testing.T) {
	requireRoot(t, "mounting a 120-layer image")
	const n = 120
	var layers [][]byte
	for i := 0; i < n; i++ {
		b := tartest.New().Dir("layers").File(fmt.Sprintf("layers/%03d", i), []byte(fmt.Sprint(i))).
			File("top", []byte(fmt.Sprint(i)))
		if i > 0 {
			b.Whiteout(fmt.Sprintf("layers/%03d", i-1))
		}
		layers = append(layers, b.Gzip())
	}
	// A deep root path makes absolute lowerdir paths far too long.
	root := filepath.Join(t.TempDir(), strings.Repeat("a-long-cache-directory-name/", 6))
	m := newMaterializer(t, Config{Root: root})
	img := tartest.Image(t, layers...)
	res, err := m.Materialize(context.Background(), tartest.FromV1(t, img))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Lease.Release()
	if abs := len(strings.Join(res.LowerDirs, ":")); abs < os.Getpagesize() {
		t.Fatalf("absolute lowerdirs are only %d bytes: the test does not exercise the page limit", abs)
	}
	if len(res.LowerDirs) != n || len(res.MountOptions) >= os.Getpagesize() {
		t.Fatalf("%d lower dirs, options %d bytes", len(res.LowerDirs), len(res.MountOptions))
	}
	want, err := tartest.Expected(img)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tartest.Snapshot(mount(t, res))
	if err != nil {
		t.Fatal(err)
	}
	if d := tartest.Diff(want, got); d != nil {
		t.Fatalf("merged tree differs:\n%s", strings.Join(d, "\n"))
	}
	if got["top"].Size != 3 || len(got) != 3 { // layers/, layers/119, top
		t.Fatalf("merged tree %v", got)
	}
}

func TestConcurrentMaterializeExtractsOnce(t *testing.T) {
	var layers [][]byte
	for i := 0; i < 6; i++ {
		b := tartest.New()
		for j := 0; j < 50; j++ {
			b.File(fmt.Sprintf("l%d/f%d", i, j), tartest.Content(fmt.Sprint(i, j), 4096))
		}
		layers = append(layers, b.Gzip())
	}
	img := tartest.FromV1(t, tartest.Image(t, layers...))
	reg := prometheus.NewRegistry()
	m := newMaterializer(t, Config{Metrics: reg, Parallelism: 3})
	var wg sync.WaitGroup
	results := make([]*Result, 16)
	errs := make([]error, 16)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = m.Materialize(context.Background(), img)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if strings.Join(results[i].LowerDirs, ":") != strings.Join(results[0].LowerDirs, ":") {
			t.Fatalf("call %d: different lower dirs", i)
		}
	}
	if got := extractions(m); got != 6 {
		t.Fatalf("%v extractions for 6 layers and 16 callers", got)
	}
	if files, bytes := testutil.ToFloat64(m.met.extractFiles), testutil.ToFloat64(m.met.extractBytes); files != 300 || bytes != 300*4096 {
		t.Fatalf("metrics: %v files, %v bytes; want 300 files of 4096 bytes", files, bytes)
	}
	if n, err := testutil.GatherAndCount(reg, "strata_overlay_extract_seconds"); err != nil || n != 1 {
		t.Fatalf("extract_seconds not registered: %d, %v", n, err)
	}
	if got := testutil.ToFloat64(m.met.cachedLayers); got != 6 {
		t.Fatalf("cached_layers = %v", got)
	}
	hits := testutil.ToFloat64(m.met.layerHits)
	collapsed := testutil.ToFloat64(m.met.collapsed)
	if hits+collapsed != 15*6 {
		t.Fatalf("hits %v + collapsed %v, want %d", hits, collapsed, 15*6)
	}
	if u := m.Usage(); u.Leased != 6 || u.Layers != 6 {
		t.Fatalf("usage %+v", u)
	}
	for _, r := range results {
		r.Lease.Release()
		r.Lease.Release() // idempotent
	}
	if u := m.Usage(); u.Leased != 0 {
		t.Fatalf("usage after release %+v", u)
	}
	if !m.IsMaterialized(context.Background(), img) {
		t.Fatal("not materialized after Materialize")
	}
	// A second Materializer on the same root finds every layer.
	m2 := newMaterializer(t, Config{Root: m.root})
	if !m2.IsMaterialized(context.Background(), img) {
		t.Fatal("reopened cache lost layers")
	}
	res, err := m2.Materialize(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	res.Lease.Release()
	if got := extractions(m2); got != 0 {
		t.Fatalf("reopened cache extracted %v layers", got)
	}
}

// gatedImage wraps an image so that layer reads block until gate closes.
type gatedImage struct {
	manifest.Image
	gate chan struct{}
}

type gatedLayer struct {
	manifest.Layer
	gate chan struct{}
}

func (g gatedImage) Layers() []manifest.Layer {
	var out []manifest.Layer
	for _, l := range g.Image.Layers() {
		out = append(out, gatedLayer{l, g.gate})
	}
	return out
}

func (g gatedLayer) Open(ctx context.Context) (io.ReadCloser, error) {
	select {
	case <-g.gate:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.Layer.Open(ctx)
}

func TestWaiterCancellationLeavesOthersAlone(t *testing.T) {
	base := tartest.FromV1(t, tartest.Image(t, tartest.New().File("f", []byte("x")).Gzip()))
	gate := make(chan struct{})
	img := gatedImageOf(base, gate)
	m := newMaterializer(t, Config{})
	ctx1, cancel1 := context.WithCancel(context.Background())
	errc1 := make(chan error, 1)
	go func() { _, err := m.Materialize(ctx1, img); errc1 <- err }()
	// Wait until the first caller has started the flight, then join it.
	waitFor(t, func() bool { m.mu.Lock(); defer m.mu.Unlock(); return len(m.flights) == 1 })
	errc2 := make(chan *Result, 1)
	go func() {
		res, err := m.Materialize(context.Background(), img)
		if err != nil {
			t.Error(err)
		}
		errc2 <- res
	}()
	waitFor(t, func() bool { return testutil.ToFloat64(m.met.collapsed) == 1 })
	cancel1()
	if err := <-errc1; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller: %v", err)
	}
	close(gate)
	res := <-errc2
	if res == nil {
		t.Fatal("second caller failed")
	}
	res.Lease.Release()
	if got := extractions(m); got != 1 {
		t.Fatalf("%v extractions", got)
	}
}

func gatedImageOf(img manifest.Image, gate chan struct{}) manifest.Image {
	return gatedImage{img, gate}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 10000; i++ {
		if cond() {
			return
		}
		// Yield without depending on wall-clock timing for correctness.
		unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil)
	}
	t.Fatal("condition not reached")
}

func TestEvictionRespectsLeases(t *testing.T) {
	mk := func(name string, size int) manifest.Image {
		return tartest.FromV1(t, tartest.Image(t, tartest.New().File(name, tartest.Content(name, size)).Gzip()))
	}
	a, b, c := mk("a", 40_000), mk("b", 40_000), mk("c", 40_000)
	m := newMaterializer(t, Config{Budget: 100_000})
	ctx := context.Background()
	ra, err := m.Materialize(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := m.Materialize(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	rb.Lease.Release()
	// c pushes the total over budget: b (unleased, LRU) goes, a (leased) stays.
	rc, err := m.Materialize(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if !m.IsMaterialized(ctx, a) || m.IsMaterialized(ctx, b) || !m.IsMaterialized(ctx, c) {
		t.Fatalf("after c: a %v b %v c %v", m.IsMaterialized(ctx, a), m.IsMaterialized(ctx, b), m.IsMaterialized(ctx, c))
	}
	if _, err := os.Stat(filepath.Join(m.root, "layers", b.Layers()[0].Digest().Encoded())); !os.IsNotExist(err) {
		t.Fatalf("evicted layer dir still there: %v", err)
	}
	// Over budget with everything leased: nothing is evicted.
	rb2, err := m.Materialize(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if u := m.Usage(); u.Layers != 3 || u.Bytes != 120_000 {
		t.Fatalf("usage %+v, want 3 leased layers over budget", u)
	}
	for _, d := range ra.LowerDirs[:1] {
		if _, err := os.Stat(filepath.Join(d, "a")); err != nil {
			t.Fatalf("leased layer damaged: %v", err)
		}
	}
	// Releasing a lets it go (it is least recently used).
	ra.Lease.Release()
	if m.IsMaterialized(ctx, a) || !m.IsMaterialized(ctx, b) || !m.IsMaterialized(ctx, c) {
		t.Fatal("release did not evict the least recently used unleased layer")
	}
	// Cleanup of a leased image removes nothing; after release it removes it.
	if err := m.Cleanup(ctx, c); err != nil || !m.IsMaterialized(ctx, c) {
		t.Fatalf("cleanup of leased image: %v, present %v", err, m.IsMaterialized(ctx, c))
	}
	rc.Lease.Release()
	rb2.Lease.Release()
	if err := m.Cleanup(ctx, c); err != nil || m.IsMaterialized(ctx, c) {
		t.Fatalf("cleanup of released image: %v, present %v", err, m.IsMaterialized(ctx, c))
	}
	if err := m.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if u := m.Usage(); u.Layers != 0 || u.Bytes != 0 {
		t.Fatalf("usage after full cleanup %+v", u)
	}
	for _, dir := range []string{"layers", "meta", "tmp"} {
		if es, _ := os.ReadDir(filepath.Join(m.root, dir)); len(es) != 0 {
			t.Errorf("%s not empty after cleanup: %d entries", dir, len(es))
		}
	}
	if es, _ := os.ReadDir(m.mountDir); len(es) != 2 {
		t.Errorf("l/ holds %d entries after cleanup, want only the padding dirs", len(es))
	}
}

func TestMaterializeErrors(t *testing.T) {
	good := tartest.New().File("ok", []byte("ok")).Gzip()
	tests := []struct {
		desc    string
		layers  [][]byte
		types   []types.MediaType
		cfg     Config
		digest  blob.Digest
		lie     bool // Open verifies against digest, which the bytes do not match
		wantErr error
	}{
		{desc: "unknown media type", layers: [][]byte{good}, types: []types.MediaType{"application/octet-stream"}, wantErr: manifest.ErrUnknownMediaType},
		{desc: "hard link to a missing target", layers: [][]byte{good, tartest.New().Link("l", "nope").Gzip()}, wantErr: ErrInvalidLayer},
		{desc: "too many entries", layers: [][]byte{tartest.New().File("a", nil).File("b", nil).File("c", nil).Gzip()}, cfg: Config{MaxEntries: 2}, wantErr: ErrLimitExceeded},
		{desc: "too many bytes", layers: [][]byte{tartest.New().File("a", make([]byte, 100_000)).Gzip()}, cfg: Config{MaxLayerBytes: 50_000}, wantErr: ErrLimitExceeded},
		{desc: "truncated gzip", layers: [][]byte{good[:len(good)-5]}, wantErr: io.ErrUnexpectedEOF},
		{desc: "gzip labelled zstd", layers: [][]byte{good}, types: []types.MediaType{types.OCILayerZStd}},
		{desc: "layer bytes that do not match the digest (checked at the end of the blob)", layers: [][]byte{good}, digest: blob.FromBytes([]byte("other")), lie: true, wantErr: blob.ErrMismatch},
		{desc: "layer digest that is a path", layers: [][]byte{good}, digest: "sha256:../../../../etc", wantErr: blob.ErrInvalidDigest},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			var ls []manifest.Layer
			for i, b := range tc.layers {
				mt := tartest.MediaTypeOf(b)
				if i < len(tc.types) {
					mt = tc.types[i]
				}
				l := tartest.RawLayer(b, mt)
				if tc.lie {
					l = lyingLayer{b: b, d: tc.digest, mt: mt}
				} else if tc.digest != "" {
					l = digestLayer{l, tc.digest}
				}
				ls = append(ls, l)
			}
			m := newMaterializer(t, tc.cfg)
			img := tartest.RawImage(ls...)
			_, err := m.Materialize(context.Background(), img)
			if err == nil {
				t.Fatal("no error")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if m.IsMaterialized(context.Background(), img) {
				t.Fatal("failed image reported materialized")
			}
			if u := m.Usage(); u.Leased != 0 {
				t.Fatalf("leases left after failure: %+v", u)
			}
			// Extractions the failure abandoned clean up on their own.
			m.running.Wait()
			if es, _ := os.ReadDir(filepath.Join(m.root, "tmp")); len(es) != 0 {
				t.Fatalf("temp dirs left after failure: %d", len(es))
			}
		})
	}
}

func TestTooManyLayers(t *testing.T) {
	var layers []manifest.Layer
	for i := 0; i <= MaxLayers; i++ {
		layers = append(layers, tartest.RawLayer(tartest.New().File(fmt.Sprint(i), nil).Tar(), types.OCIUncompressedLayer))
	}
	m := newMaterializer(t, Config{})
	_, err := m.Materialize(context.Background(), tartest.RawImage(layers...))
	if !errors.Is(err, ErrTooManyLayers) {
		t.Fatalf("err = %v", err)
	}
}

type digestLayer struct {
	manifest.Layer
	d blob.Digest
}

func (l digestLayer) Digest() blob.Digest { return l.d }

func TestRepeatedLayerAndSingleLayer(t *testing.T) {
	requireRoot(t, "mounting images with a repeated layer and with one layer")
	shared := tartest.New().Dir("s").File("s/f", []byte("shared")).File("gone", []byte("g")).Gzip()
	middle := tartest.New().Whiteout("s/f").Whiteout("gone").File("m", []byte("m")).Gzip()
	m := newMaterializer(t, Config{})
	for _, tc := range []struct {
		desc   string
		layers [][]byte
		lowers int
	}{
		{"a layer repeated above a layer that deleted its files", [][]byte{shared, middle, shared}, 2},
		{"a single layer (padded with an empty lower dir)", [][]byte{shared}, 2},
		{"no layers at all", nil, 2},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			img := tartest.Image(t, tc.layers...)
			res, err := m.Materialize(context.Background(), tartest.FromV1(t, img))
			if err != nil {
				t.Fatal(err)
			}
			defer res.Lease.Release()
			if len(res.LowerDirs) != tc.lowers {
				t.Fatalf("lower dirs %v", res.LowerDirs)
			}
			want, err := tartest.Expected(img)
			if err != nil {
				t.Fatal(err)
			}
			got, err := tartest.Snapshot(mount(t, res))
			if err != nil {
				t.Fatal(err)
			}
			if d := tartest.Diff(want, got); d != nil {
				t.Fatalf("merged tree differs:\n%s", strings.Join(d, "\n"))
			}
		})
	}
}

func TestMountWritable(t *testing.T) {
	requireRoot(t, "a writable overlay mount")
	img := tartest.FromV1(t, tartest.Image(t, tartest.New().File("f", []byte("lower")).Gzip()))
	m := newMaterializer(t, Config{})
	res, err := m.Materialize(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Lease.Release()
	if err := res.Mount(t.TempDir(), "upperdir=relative/upper", "workdir=/abs/work"); err == nil {
		t.Fatal("relative upperdir accepted")
	}
	if err := res.Mount(t.TempDir(), "lowerdir=/x"); err == nil {
		t.Fatal("lowerdir override accepted")
	}
	upper, work, target := t.TempDir(), t.TempDir(), t.TempDir()
	if err := res.Mount(target, "upperdir="+upper, "workdir="+work); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(target, 0)
	if err := os.WriteFile(filepath.Join(target, "f"), []byte("upper"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(upper, "f")); string(b) != "upper" {
		t.Fatalf("write did not go to the upper dir: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(res.LowerDirs[0], "f")); string(b) != "lower" {
		t.Fatalf("lower layer modified: %q", b)
	}
	if wd, _ := os.Getwd(); wd == res.MountDir {
		t.Fatal("Mount changed the process's working directory")
	}
}

// lyingLayer claims digest d for bytes b and verifies against d.
type lyingLayer struct {
	b  []byte
	d  blob.Digest
	mt types.MediaType
}

func (l lyingLayer) Digest() blob.Digest             { return l.d }
func (l lyingLayer) MediaType() types.MediaType      { return l.mt }
func (l lyingLayer) Size() int64                     { return int64(len(l.b)) }
func (l lyingLayer) Authorize(context.Context) error { return nil }
func (l lyingLayer) Open(context.Context) (io.ReadCloser, error) {
	return blob.NewVerifier(io.NopCloser(bytes.NewReader(l.b)), l.d, int64(len(l.b)), nil), nil
}

func TestReopenReconciles(t *testing.T) {
	root := t.TempDir()
	img := tartest.FromV1(t, tartest.Image(t, tartest.New().File("f", []byte("12345")).Gzip(), tartest.New().File("g", []byte("1")).Gzip()))
	m := newMaterializer(t, Config{Root: root})
	res, err := m.Materialize(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	res.Lease.Release()
	h0 := img.Layers()[0].Digest().Encoded()
	// Simulate a crash: a half-extracted temp dir, a lost meta file, a
	// stale short link and a meta file without its layer.
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "tmp", "abc-123", "half"), 0o755))
	must(os.Remove(filepath.Join(root, "meta", h0)))
	must(os.Symlink("../layers/nowhere", filepath.Join(root, "l", "zzzz")))
	must(os.WriteFile(filepath.Join(root, "meta", strings.Repeat("0", 64)), []byte("aaaa 1\n"), 0o600))

	m2 := newMaterializer(t, Config{Root: root})
	if !m2.IsMaterialized(context.Background(), img) {
		t.Fatal("layers lost on reopen")
	}
	if u := m2.Usage(); u.Layers != 2 || u.Bytes != 6 {
		t.Fatalf("usage after reopen %+v, want 2 layers of 6 bytes", u)
	}
	for _, p := range []string{"tmp/abc-123", "l/zzzz", "meta/" + strings.Repeat("0", 64)} {
		if _, err := os.Lstat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("%s survived reopening: %v", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "meta", h0)); err != nil {
		t.Errorf("meta not rewritten: %v", err)
	}
	res, err = m2.Materialize(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Lease.Release()
	if extractions(m2) != 0 {
		t.Fatal("reopened cache extracted again")
	}
	for _, d := range res.LowerDirs {
		if _, err := os.Stat(d); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDurableAndCancelled(t *testing.T) {
	img := tartest.FromV1(t, tartest.Image(t, tartest.New().File("f", []byte("x")).Gzip()))
	m := newMaterializer(t, Config{Durable: true})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := m.Materialize(ctx, img); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	if m.IsMaterialized(context.Background(), img) {
		t.Fatal("materialized under a cancelled context")
	}
	res, err := m.Materialize(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	res.Lease.Release()
	if b, err := os.ReadFile(filepath.Join(res.LowerDirs[0], "f")); err != nil || string(b) != "x" {
		t.Fatalf("f = %q, %v", b, err)
	}
}

func TestShortIDCollision(t *testing.T) {
	m := newMaterializer(t, Config{})
	h1 := strings.Repeat("ab", 32)
	h2 := strings.Repeat("ab", 31) + "cd" // same base32 prefix for many characters
	for _, h := range []string{h1, h2} {
		if err := os.Mkdir(filepath.Join(m.root, "layers", h), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	id1, err := m.allocID(h1)
	if err != nil {
		t.Fatal(err)
	}
	m.ids[id1] = blob.Digest("sha256:" + h1)
	id2, err := m.allocID(h2)
	if err != nil {
		t.Fatal(err)
	}
	if len(id1) != 4 || id2 == id1 || !strings.HasPrefix(id2, id1) {
		t.Fatalf("ids %q and %q", id1, id2)
	}
	for id, h := range map[string]string{id1: h1, id2: h2} {
		if !m.linkOK(id, h) {
			t.Errorf("l/%s does not lead to %s", id, h)
		}
	}
	// Asking again returns the same id.
	if again, err := m.allocID(h2); err != nil || again != id2 {
		t.Fatalf("again: %q, %v", again, err)
	}
}
