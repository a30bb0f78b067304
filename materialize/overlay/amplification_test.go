package overlay

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// patternReader yields an endless run of one byte.
type patternReader byte

func (r patternReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}

// bigFileLayer is a gzip layer holding one file of size bytes of b (0:
// zeros), streamed so that the test never holds the content in memory.
func bigFileLayer(t testing.TB, name string, size int64, b byte) []byte {
	t.Helper()
	var out bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&out, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: tartest.Epoch}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(tw, patternReader(b), size); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// diskUsage is the space the files under dir take (st_blocks), with what
// cannot be read counted as nothing (the tree changes while it is walked).
func diskUsage(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			n += fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return nil
	})
	return n
}

// peakUsage samples diskUsage(dir) until stop is called and returns the
// largest value seen.
func peakUsage(dir string) (stop func() int64) {
	var peak atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if u := diskUsage(dir); u > peak.Load() {
				peak.Store(u)
			}
			select {
			case <-done:
				return
			default:
			}
		}
	}()
	return func() int64 {
		close(done)
		wg.Wait()
		if u := diskUsage(dir); u > peak.Load() {
			peak.Store(u)
		}
		return peak.Load()
	}
}

// TestBudgetHoldsWhileWriting: a small layer that expands to 64 MiB of
// data under an 8 MiB budget fails while it is written, and the disk never
// holds much more than the budget (sampled during the extraction).
func TestBudgetHoldsWhileWriting(t *testing.T) {
	const budget = 8 << 20
	layer := bigFileLayer(t, "big", 64<<20, 'a')
	m := newMaterializer(t, Config{Budget: budget})
	stop := peakUsage(m.root)
	_, err := m.Materialize(context.Background(), tartest.RawImage(tartest.RawLayer(layer, types.OCILayer)))
	peak := stop()
	if !errors.Is(err, ErrLimitExceeded) {
		t.Fatalf("Materialize of a %d KiB layer holding 64 MiB under an 8 MiB budget = %v, want ErrLimitExceeded", len(layer)>>10, err)
	}
	// One copy buffer (256 KiB) may be in flight past the check.
	if peak > budget+1<<20 {
		t.Errorf("peak disk usage during extraction %d bytes, budget %d", peak, budget)
	}
	if es, _ := os.ReadDir(m.path("tmp")); len(es) != 0 {
		t.Errorf("tmp/ holds %d entries after the failure", len(es))
	}
}

// TestZeroRunsBecomeHoles: a file of 256 MiB of zeros, a file with data
// around a long zero run and a PAX sparse entry extract with their full
// logical sizes and contents, take (almost) no disk, and fit a 16 MiB
// budget, as holes are not written.
func TestZeroRunsBecomeHoles(t *testing.T) {
	const mib = 1 << 20
	zeros := bigFileLayer(t, "zeros", 256*mib, 0)
	var mixed bytes.Buffer
	mixed.Write(bytes.Repeat([]byte("head"), 1000))
	mixed.Write(make([]byte, 32*mib))
	mixed.Write([]byte("tail"))
	mixedLayer := tartest.New().File("mixed", mixed.Bytes()).Gzip()
	sparse := tartest.PAXSparse("sparse", 100*mib, map[int64][]byte{0: []byte("begin"), 50 * mib: bytes.Repeat([]byte("m"), 8192)})

	m := newMaterializer(t, Config{Budget: 16 * mib})
	img := tartest.RawImage(tartest.RawLayer(zeros, types.OCILayer), tartest.RawLayer(mixedLayer, types.OCILayer),
		tartest.RawLayer(sparse, types.OCIUncompressedLayer))
	res, err := m.Materialize(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Lease.Release()
	// LowerDirs are top first.
	for _, c := range []struct {
		desc     string
		dir      string
		name     string
		size     int64
		maxAlloc int64
		check    func([]byte) bool
	}{
		{"zeros", res.LowerDirs[2], "zeros", 256 * mib, 64 << 10, func(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }},
		{"data around a zero run", res.LowerDirs[1], "mixed", int64(mixed.Len()), 64 << 10, func(b []byte) bool { return bytes.Equal(b, mixed.Bytes()) }},
		{"PAX sparse entry", res.LowerDirs[0], "sparse", 100 * mib, 64 << 10, func(b []byte) bool {
			return string(b[:5]) == "begin" && bytes.Equal(b[50*mib:50*mib+8192], bytes.Repeat([]byte("m"), 8192)) &&
				bytes.Count(b[5:50*mib], []byte{0}) == 50*mib-5 && bytes.Count(b[50*mib+8192:], []byte{0}) == len(b)-50*mib-8192
		}},
	} {
		p := filepath.Join(c.dir, c.name)
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatalf("%s: %v", c.desc, err)
		}
		if st.Size != c.size {
			t.Errorf("%s: size %d, want %d", c.desc, st.Size, c.size)
		}
		if st.Blocks*512 > c.maxAlloc {
			t.Errorf("%s: takes %d bytes of disk, want at most %d (zeros were written)", c.desc, st.Blocks*512, c.maxAlloc)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !c.check(b) {
			t.Errorf("%s: content differs", c.desc)
		}
	}
	if u := m.Usage(); u.Bytes > 64<<10 {
		t.Errorf("cache usage %d bytes: holes were counted", u.Bytes)
	}
}

// countingLayer counts the blob bytes its readers deliver.
type countingLayer struct {
	manifest.Layer
	read *atomic.Int64
}

func (l countingLayer) Open(ctx context.Context) (io.ReadCloser, error) {
	rc, err := l.Layer.Open(ctx)
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

// originImage is img with another origin.
type originImage struct {
	manifest.Image
	origin string
}

func (i originImage) Origin() string { return i.origin }

// TestBombFailsFastOnRetry: a layer that failed its decompression limit
// fails again without being read, for the same origin; another origin
// reads it itself (one registry cannot poison a digest for all).
func TestBombFailsFastOnRetry(t *testing.T) {
	var read atomic.Int64
	bomb := bigFileLayer(t, "bomb", 256<<20, 'b')
	img := tartest.RawImage(countingLayer{tartest.RawLayer(bomb, types.OCILayer), &read})
	m := newMaterializer(t, Config{MaxLayerBytes: 32 << 20})
	ctx := context.Background()

	_, err := m.Materialize(ctx, img)
	if !errors.Is(err, ErrLimitExceeded) {
		t.Fatalf("first attempt: %v, want ErrLimitExceeded", err)
	}
	first := read.Swap(0)
	if first == 0 {
		t.Fatal("first attempt read nothing")
	}
	_, err = m.Materialize(ctx, img)
	if !errors.Is(err, ErrLimitExceeded) {
		t.Fatalf("retry: %v, want the same ErrLimitExceeded", err)
	}
	if n := read.Swap(0); n != 0 {
		t.Errorf("retry read %d bytes of the layer (first attempt %d), want 0: the failure was not remembered", n, first)
	}
	if _, err = m.Materialize(ctx, originImage{img, "elsewhere"}); !errors.Is(err, ErrLimitExceeded) {
		t.Fatalf("other origin: %v", err)
	}
	if read.Load() == 0 {
		t.Error("another origin was answered from this origin's failure")
	}
}

// TestTransientFailureNotRemembered: a layer whose read failed (not its
// content) is read again on the next attempt.
func TestTransientFailureNotRemembered(t *testing.T) {
	good := tartest.New().File("f", []byte("content")).Gzip()
	d := blob.FromBytes(good)
	var read atomic.Int64
	m := newMaterializer(t, Config{})
	// Wrong bytes under the digest: a mismatch, which a retry may cure.
	bad := lyingLayer{b: tartest.New().File("f", []byte("other")).Gzip(), d: d, mt: types.OCILayer}
	if _, err := m.Materialize(context.Background(), tartest.RawImage(countingLayer{bad, &read})); err == nil {
		t.Fatal("corrupt layer accepted")
	}
	res, err := m.Materialize(context.Background(), tartest.RawImage(countingLayer{tartest.RawLayer(good, types.OCILayer), &read}))
	if err != nil {
		t.Fatalf("after a transient failure: %v", err)
	}
	res.Lease.Release()
}

// TestSymlinkTargetLimit: Linux stores symlink targets of at most 4095
// bytes; a longer one is an invalid layer, not an I/O error.
func TestSymlinkTargetLimit(t *testing.T) {
	for _, c := range []struct {
		desc    string
		n       int
		wantErr error
	}{
		{"4095 bytes", 4095, nil},
		{"4096 bytes", 4096, ErrInvalidLayer},
		{"64 KiB", 64 << 10, ErrInvalidLayer},
	} {
		t.Run(c.desc, func(t *testing.T) {
			s := newSandbox(t)
			target := bytes.Repeat([]byte("a/"), c.n/2+1)[:c.n]
			_, err := applyBytes(context.Background(), s.layer, tartest.New().Symlink("l", string(target)).Tar(), applyConfig{privileged: os.Geteuid() == 0})
			if c.wantErr == nil && err != nil || c.wantErr != nil && !errors.Is(err, c.wantErr) {
				t.Fatalf("err = %v, want %v", err, c.wantErr)
			}
			s.check(t)
		})
	}
}
