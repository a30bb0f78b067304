package ext4

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkMaterializeWrites measures one cold Materialize of a ~256 MiB
// image plus its read-only --out placement, with the image written in
// place in the disk tier (staged) and through WorkDir then stored by copy
// (copy, the path without Config.Stager), on the file system of
// STRATA_BENCH_DIR (default: the test's temporary directory). It reports
// the bytes the process caused to be written (/proc/self/io write_bytes)
// per image's allocated bytes ("full-writes") and the time of Materialize.
func BenchmarkMaterializeWrites(b *testing.B) {
	dir := os.Getenv("STRATA_BENCH_DIR")
	if dir == "" {
		dir = b.TempDir()
	} else {
		var err error
		if dir, err = os.MkdirTemp(dir, "bench-"); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
	}
	img, total, files := genImage(b, dir, 3, []genSpec{
		{files: 5000, bytes: 160 << 20},
		{files: 2000, bytes: 64 << 20, overwrite: 300, whiteouts: 100},
		{files: 1000, bytes: 32 << 20, links: 100},
	})
	b.Logf("image: %d layers, %d files, %d MiB uncompressed", len(img.layers), files, total>>20)
	for _, mode := range []struct {
		name  string
		stage bool
	}{{"staged", true}, {"copy", false}} {
		b.Run(mode.name, func(b *testing.B) {
			ctx := context.Background()
			var written, data int64
			var mat time.Duration
			n := 0
			for b.Loop() {
				b.StopTimer()
				root := filepath.Join(dir, "root")
				os.RemoveAll(root)
				os.Remove(filepath.Join(dir, "out.ext4"))
				h := newStagedHost(b, root, nil, mode.stage)
				b.StartTimer()
				w0 := writeBytes()
				start := time.Now()
				r, err := h.conv.Materialize(ctx, img, nil)
				if err != nil {
					b.Fatal(err)
				}
				mat += time.Since(start)
				if _, err := CopyOut(r.Path, filepath.Join(dir, "out.ext4"), 0o400); err != nil {
					b.Fatal(err)
				}
				if err := h.conv.Flush(ctx); err != nil {
					b.Fatal(err)
				}
				written += writeBytes() - w0
				b.StopTimer()
				data += allocatedBytes(b, r.Path)
				h.conv.Close()
				h.store.Close()
				b.StartTimer()
				n++
			}
			b.ReportMetric(float64(written)/float64(n)/(1<<20), "written-MiB/op")
			b.ReportMetric(float64(written)/float64(data), "full-writes")
			b.ReportMetric(mat.Seconds()/float64(n), "materialize-s/op")
		})
	}
}
