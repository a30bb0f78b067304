package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/klauspost/compress/gzip"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/internal/layerio"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// buildImage runs the converter's build of img into a new file and returns
// its path.
func buildImage(t testing.TB, c *Converter, img manifest.Image) (string, error) {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "img-*.ext4")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = c.build(context.Background(), img, f, growSpec{GDTBlocks: gdtBlocks(c.cfg.MaxDiskSize)})
	return f.Name(), err
}

func converterWith(t testing.TB, cfg Config) *Converter {
	t.Helper()
	if cfg.Store == nil {
		cfg.Store = bigStore()
	}
	if cfg.WorkDir == "" {
		cfg.WorkDir = t.TempDir()
	}
	cfg.SigningKey = fleetKey
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestSymlinkTargetLimit: a symlink target over 4095 bytes is refused
// (e2fsck rejects the image tar2ext4 would write); 4095 bytes make a clean
// image.
func TestSymlinkTargetLimit(t *testing.T) {
	for _, c := range []struct {
		desc    string
		n       int
		wantErr error
	}{
		{"4095 bytes", 4095, nil},
		{"4096 bytes", 4096, ErrInvalidLayer},
		{"64 KiB, shadowed by an upper layer", 64 << 10, ErrInvalidLayer},
	} {
		t.Run(c.desc, func(t *testing.T) {
			target := string(bytes.Repeat([]byte("a/"), c.n/2+1)[:c.n])
			img := imageOf(tartest.New().Symlink("l", target).Tar(), tartest.New().File("l", []byte("upper")).Tar())
			if c.wantErr == nil {
				img = imageOf(tartest.New().Symlink("l", target).Tar())
			}
			p, err := buildImage(t, converterWith(t, Config{}), img)
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("err = %v, want %v", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			e2fsck(t, p)
		})
	}
}

// TestOverlayXattrsStripped: overlayfs's own xattrs never reach the image
// (as the overlay applier never sets them); other xattrs do.
func TestOverlayXattrsStripped(t *testing.T) {
	layer := tartest.New().
		Dir("d", tartest.Xattr("trusted.overlay.opaque", []byte("y")), tartest.Xattr("user.overlay.redirect", []byte("/x"))).
		File("d/f", []byte("f"), tartest.Xattr("user.keep", []byte("v")), tartest.Xattr("trusted.overlay.metacopy", nil)).Tar()
	var out bytes.Buffer
	if _, err := Flatten(context.Background(), openers(layer), &out, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	tree := treeOfTar(t, out.Bytes())
	if x := tree["d"].Xattrs; len(x) != 0 {
		t.Errorf("d: xattrs %v, want none (overlay xattrs stripped)", x)
	}
	if x := tree["d/f"].Xattrs; len(x) != 1 || x["user.keep"] != "v" {
		t.Errorf("d/f: xattrs %v, want only user.keep", x)
	}
}

// TestImageLimits: the layers, entries and bytes of a whole image are
// bounded, besides each layer's own size.
func TestImageLimits(t *testing.T) {
	small := func(name string) []byte { return tartest.New().File(name, []byte("x")).Tar() }
	tests := []struct {
		desc    string
		cfg     Config
		layers  [][]byte
		wantErr error
	}{
		{desc: "more layers than MaxLayers", cfg: Config{MaxLayers: 3},
			layers: [][]byte{small("a"), small("b"), small("c"), small("d")}, wantErr: ErrTooManyLayers},
		{desc: "more than 500 layers by default", cfg: Config{},
			layers: func() [][]byte {
				ls := make([][]byte, DefaultMaxLayers+1)
				for i := range ls {
					ls[i] = small(fmt.Sprint(i))
				}
				return ls
			}(), wantErr: ErrTooManyLayers},
		{desc: "more entries than MaxEntries over all layers", cfg: Config{MaxEntries: 5},
			layers:  [][]byte{tartest.New().File("a", nil).File("b", nil).File("c", nil).Tar(), tartest.New().File("d", nil).File("e", nil).File("f", nil).Tar()},
			wantErr: layerio.ErrBudgetExceeded},
		{desc: "more bytes than MaxImageBytes over all layers, shadowed included", cfg: Config{MaxImageBytes: 1000},
			layers:  [][]byte{tartest.New().File("a", make([]byte, 600)).Tar(), tartest.New().File("a", make([]byte, 600)).Tar()},
			wantErr: layerio.ErrBudgetExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			_, err := buildImage(t, converterWith(t, tt.cfg), imageOf(tt.layers...))
			if !errors.Is(err, tt.wantErr) || !errors.Is(err, ErrLayerTooLarge) {
				t.Fatalf("err = %v, want %v (and ErrLayerTooLarge)", err, tt.wantErr)
			}
		})
	}
	// At the limits, the image converts.
	_, err := buildImage(t, converterWith(t, Config{MaxLayers: 2, MaxEntries: 2, MaxImageBytes: 2}),
		imageOf(small("a"), small("b")))
	if err != nil {
		t.Fatalf("at the limits: %v", err)
	}
}

// countingLayer is an uncompressed in-memory layer that counts the bytes
// its readers deliver.
type countingLayer struct {
	rawLayer
	read *atomic.Int64
}

func (l *countingLayer) MediaType() types.MediaType { return types.MediaType(types.OCILayer) }
func (l *countingLayer) Open(ctx context.Context) (io.ReadCloser, error) {
	rc, err := l.rawLayer.Open(ctx)
	if err != nil {
		return nil, err
	}
	return &countingReader{rc, l.read}, nil
}

type countingReader struct {
	io.ReadCloser
	n *atomic.Int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	r.n.Add(int64(n))
	return n, err
}

type originImage struct {
	*testImage
	origin string
}

func (i originImage) Origin() string { return i.origin }

// gzipFileLayer is a gzip layer of one file of size bytes of b, streamed.
func gzipFileLayer(t testing.TB, name string, size int64, b byte) []byte {
	t.Helper()
	var out bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&out, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: tartest.Epoch}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(tw, bytes.NewReader(bytes.Repeat([]byte{b}, int(size))), size); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	zw.Close()
	return out.Bytes()
}

// TestBombFailsFastOnRetry: a layer over its decompression limit is
// remembered; the next conversion with it fails without reading it, for
// the same origin only.
func TestBombFailsFastOnRetry(t *testing.T) {
	var read atomic.Int64
	bomb := &countingLayer{rawLayer{data: gzipFileLayer(t, "bomb", 64<<20, 'b')}, &read}
	img := &testImage{layers: []manifest.Layer{&rawLayer{data: tartest.New().File("ok", nil).Tar()}, bomb}}
	c := converterWith(t, Config{MaxLayerBytes: 8 << 20})
	ctx := context.Background()
	if _, err := c.Materialize(ctx, img, nil); !errors.Is(err, ErrLayerTooLarge) {
		t.Fatalf("first attempt: %v, want ErrLayerTooLarge", err)
	}
	first := read.Swap(0)
	if first == 0 {
		t.Fatal("the first attempt read nothing")
	}
	if _, err := c.Materialize(ctx, img, nil); !errors.Is(err, ErrLayerTooLarge) {
		t.Fatalf("retry: %v, want ErrLayerTooLarge", err)
	}
	if n := read.Swap(0); n != 0 {
		t.Errorf("retry read %d bytes of the bomb (first attempt %d), want 0", n, first)
	}
	if _, err := c.Materialize(ctx, originImage{img, "elsewhere"}, nil); !errors.Is(err, ErrLayerTooLarge) {
		t.Fatalf("other origin: %v", err)
	}
	if read.Load() == 0 {
		t.Error("another origin was answered from this origin's failure")
	}
}

// TestZeroFileTakesNoSpace: a layer holding 256 MiB of zeros converts to
// an image whose file takes little disk (zero blocks are holes), and the
// image is clean.
func TestZeroFileTakesNoSpace(t *testing.T) {
	img := imageOf()
	img.layers = []manifest.Layer{&countingLayer{rawLayer{data: gzipFileLayer(t, "zeros", 256<<20, 0)}, new(atomic.Int64)}}
	p, err := buildImage(t, converterWith(t, Config{}), img)
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size < 256<<20 || st.Blocks*512 > 16<<20 {
		t.Errorf("image: size %d, %d bytes on disk; want >= 256 MiB logical, little on disk", st.Size, st.Blocks*512)
	}
	e2fsck(t, p)
}

// TestDiskBudgetHoldsWhileWriting: content over MaxDiskSize fails while
// it is written, and the work directory never holds much more than that
// (sampled during the conversion).
func TestDiskBudgetHoldsWhileWriting(t *testing.T) {
	const maxDisk = 16 << 20
	img := imageOf()
	img.layers = []manifest.Layer{&countingLayer{rawLayer{data: gzipFileLayer(t, "big", 96<<20, 'a')}, new(atomic.Int64)}}
	c := converterWith(t, Config{MaxDiskSize: maxDisk})
	var peak atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			var n int64
			filepath.Walk(c.cfg.WorkDir, func(p string, fi os.FileInfo, err error) error {
				if err == nil {
					n += fi.Sys().(*syscall.Stat_t).Blocks * 512
				}
				return nil
			})
			if n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	_, err := c.Materialize(context.Background(), img, nil)
	close(done)
	wg.Wait()
	if err == nil {
		t.Fatal("96 MiB of content converted under a 16 MiB MaxDiskSize")
	}
	if p := peak.Load(); p > maxDisk+4<<20 {
		t.Errorf("peak disk usage of the work directory %d bytes, MaxDiskSize %d", p, maxDisk)
	}
}

// peakHeap converts img and returns the highest HeapInuse sampled during
// the conversion, above the value before it.
func peakHeap(t *testing.T, img manifest.Image) uint64 {
	t.Helper()
	c := converterWith(t, Config{})
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	_, err := buildImage(t, c, img)
	close(done)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if peak.Load() < base {
		return 0
	}
	return peak.Load() - base
}

// TestConversionMemoryFlatInLayers: the peak heap of a conversion does not
// grow with the number of layers (each layer's read-ahead buffers are
// released once it is consumed): 300 small layers need about what 10 do.
func TestConversionMemoryFlatInLayers(t *testing.T) {
	if testing.Short() {
		t.Skip("converts 310 layers")
	}
	mk := func(n int) manifest.Image {
		img := &testImage{}
		for i := range n {
			img.layers = append(img.layers, &countingLayer{rawLayer{data: tartest.New().
				File(fmt.Sprintf("l%d/f", i), tartest.Content(fmt.Sprint(i), 4096)).Gzip()}, new(atomic.Int64)})
		}
		return img
	}
	p10 := peakHeap(t, mk(10))
	p300 := peakHeap(t, mk(300))
	t.Logf("peak heap above baseline: 10 layers %d KiB, 300 layers %d KiB", p10>>10, p300>>10)
	// Allow for the per-path index and GC timing, not for per-layer buffers
	// (~5 MiB each before the fix: 1.5 GB for 300 layers).
	if p300 > p10+48<<20 {
		t.Errorf("peak heap grows with layers: 10 layers %d MiB, 300 layers %d MiB", p10>>20, p300>>20)
	}
}

var _ = blob.FromBytes
