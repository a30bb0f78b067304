package overlay

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/sync/errgroup"

	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/internal/layerio"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// benchImage is an 8-layer gzip image: each layer holds STRATA_BENCH_LAYER_MB
// MiB (default 64, so 512 MiB in all) in files of 4 KiB to 124 KiB, half
// pseudo-random and half zeros (so gzip roughly halves it).
type benchImage struct {
	img   v1.Image
	mimg  manifest.Image
	bytes int64
	files int
}

var (
	benchOnce sync.Once
	benchImg  benchImage
)

func getBenchImage(b *testing.B) benchImage {
	benchOnce.Do(func() {
		mb := 64
		if s := os.Getenv("STRATA_BENCH_LAYER_MB"); s != "" {
			if v, err := strconv.Atoi(s); err == nil && v > 0 {
				mb = v
			}
		}
		var layers [][]byte
		var total int64
		files := 0
		rnd := tartest.Content("bench", 1<<20)
		for l := 0; l < 8; l++ {
			bld := tartest.New()
			var size int64
			for i := 0; size < int64(mb)<<20; i++ {
				n := 4096 + (i*7919%31)*4096
				data := make([]byte, n)
				off := (i * 4099) % (len(rnd) - n)
				copy(data[:n/2], rnd[off:off+n/2])
				if i%500 == 0 {
					bld.Dir(fmt.Sprintf("l%d/d%d", l, i/500))
				}
				bld.File(fmt.Sprintf("l%d/d%d/f%d", l, i/500, i), data)
				size += int64(n)
				files++
			}
			total += size
			layers = append(layers, bld.Gzip())
		}
		img := tartest.Image(b, layers...)
		m, err := tartest.Adapt(img)
		if err != nil {
			b.Fatal(err)
		}
		benchImg = benchImage{img: img, mimg: m, bytes: total, files: files}
	})
	if benchImg.img == nil {
		b.Fatal("bench image not built")
	}
	return benchImg
}

// BenchmarkMaterialize compares, on one image and in one run:
//   - extract: layer blobs in memory, no layer dirs (a fresh root each time);
//   - extract-no-readahead: the same without overlapping decompression and
//     file writing within a layer;
//   - extract-from-registry: the same, the blobs streamed from an in-process
//     registry over loopback HTTP;
//   - dirs-present: every layer already extracted (the hot path);
//   - peer-ggcr-flatten-tar-x: go-containerregistry's mutate.Extract
//     flattening piped into `tar -x`;
//   - floor-gunzip: decompressing all layers, in parallel, to nowhere.
func BenchmarkMaterialize(b *testing.B) {
	bi := getBenchImage(b)
	ctx := context.Background()
	b.Run("extract-no-readahead", func(b *testing.B) {
		readahead = false
		defer func() { readahead = true }()
		extractFresh(b, bi, Config{})
	})
	b.Run("extract", func(b *testing.B) {
		par, _ := strconv.Atoi(os.Getenv("STRATA_BENCH_PARALLELISM"))
		extractFresh(b, bi, Config{Parallelism: par})
		b.ReportMetric(float64(bi.files)*float64(b.N)/b.Elapsed().Seconds(), "files/s")
	})
	b.Run("extract-from-registry", func(b *testing.B) {
		// Cold: layers stream from go-containerregistry's in-process registry
		// over loopback HTTP, verified as they are read.
		srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
		defer srv.Close()
		ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://") + "/bench/img:latest")
		if err != nil {
			b.Fatal(err)
		}
		if err := remote.Write(ref, bi.img); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.SetBytes(bi.bytes)
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			root := scratchDir(b)
			m, err := New(Config{Root: root})
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			rimg, err := remote.Image(ref)
			if err != nil {
				b.Fatal(err)
			}
			mimg, err := tartest.Adapt(rimg)
			if err != nil {
				b.Fatal(err)
			}
			res, err := m.Materialize(ctx, mimg)
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			res.Lease.Release()
			b.StartTimer()
		}
	})
	b.Run("dirs-present", func(b *testing.B) {
		m, err := New(Config{Root: scratchDir(b)})
		if err != nil {
			b.Fatal(err)
		}
		res, err := m.Materialize(ctx, bi.mimg)
		if err != nil {
			b.Fatal(err)
		}
		res.Lease.Release()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			res, err := m.Materialize(ctx, bi.mimg)
			if err != nil {
				b.Fatal(err)
			}
			res.Lease.Release()
		}
	})
	b.Run("peer-ggcr-flatten-tar-x", func(b *testing.B) {
		if _, err := exec.LookPath("tar"); err != nil {
			b.Skip("no tar")
		}
		b.ReportAllocs()
		b.SetBytes(bi.bytes)
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			dir := scratchDir(b)
			b.StartTimer()
			rc := mutate.Extract(bi.img)
			cmd := exec.Command("tar", "-x", "-C", dir)
			cmd.Stdin = rc
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("tar: %v\n%s", err, out)
			}
			rc.Close()
		}
	})
	b.Run("floor-gunzip", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(bi.bytes)
		for i := 0; i < b.N; i++ {
			var g errgroup.Group
			g.SetLimit(2)
			for _, l := range bi.mimg.Layers() {
				g.Go(func() error {
					rc, err := layerio.Open(ctx, l, layerio.Limits{})
					if err != nil {
						return err
					}
					defer rc.Close()
					_, err = io.Copy(io.Discard, rc)
					return err
				})
			}
			if err := g.Wait(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// extractFresh times Materialize of bi into a new materializer with cfg on
// a fresh root per iteration (set-up and lease release untimed).
//
// It also reports the CPU time (user and system, all threads) the process
// spent in the timed Materialize calls: on a shared machine it varies
// much less than the wall time.
func extractFresh(b *testing.B, bi benchImage, cfg Config) {
	b.ReportAllocs()
	b.SetBytes(bi.bytes)
	var cpu time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		cfg.Root = scratchDir(b)
		m, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		c0 := processCPU()
		res, err := m.Materialize(context.Background(), bi.mimg)
		cpu += processCPU() - c0
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		res.Lease.Release()
		b.StartTimer()
	}
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
}

// processCPU is the user and system time of the process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkIsMaterialized measures the hot path for an extracted 8-layer
// image (it must stay far below 1 ms).
func BenchmarkIsMaterialized(b *testing.B) {
	var layers [][]byte
	for i := 0; i < 8; i++ {
		layers = append(layers, tartest.New().File(fmt.Sprint(i), []byte("x")).Gzip())
	}
	img := tartest.FromV1(b, tartest.Image(b, layers...))
	m, err := New(Config{Root: filepath.Join(b.TempDir(), "r")})
	if err != nil {
		b.Fatal(err)
	}
	res, err := m.Materialize(context.Background(), img)
	if err != nil {
		b.Fatal(err)
	}
	defer res.Lease.Release()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if !m.IsMaterialized(context.Background(), img) {
			b.Fatal("not materialized")
		}
	}
}

// The benchmarks' trees are deleted when the test binary exits, never between
// iterations. On ext4 without a journal (the root filesystem of the machines
// these benchmarks were written on), the inode allocator passes over every
// inode deleted in the last 60 s, or 360 s while its inode table block is
// dirty (recently_deleted in fs/ext4/ialloc.c). Creating 20k files right after
// deleting 20k others took 21 s there instead of 1.1 s, and that cost, not
// the code under test, is what a delete-then-create loop would measure.
var scratch struct {
	once sync.Once
	dir  string
	err  error
}

func scratchDir(b *testing.B) string {
	b.Helper()
	scratch.once.Do(func() {
		scratch.dir, scratch.err = os.MkdirTemp(os.Getenv("STRATA_BENCH_DIR"), "strata-overlay-bench-")
	})
	if scratch.err != nil {
		b.Fatal(scratch.err)
	}
	dir, err := os.MkdirTemp(scratch.dir, "run-")
	if err != nil {
		b.Fatal(err)
	}
	return dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if scratch.dir != "" {
		os.RemoveAll(scratch.dir)
	}
	os.Exit(code)
}
