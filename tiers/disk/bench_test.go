package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
)

var benchSizes = []struct {
	name string
	size int
}{
	{"1KiB", 1 << 10},
	{"1MiB", 1 << 20},
	{"64MiB", 64 << 20},
}

// benchTier opens a tier with one stored blob of size bytes.
func benchTier(b *testing.B, size int) (*Tier, blob.Digest) {
	b.Helper()
	tr := openTier(b, Config{})
	return tr, put(b, tr, randomBytes(uint64(size), size))
}

func BenchmarkStat(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) {
			tr, d := benchTier(b, s.size)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := tr.Stat(ctx, d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStatLatency reports the median and 99th percentile of single
// Stat calls over an index of 10k blobs.
func BenchmarkStatLatency(b *testing.B) {
	tr := openTier(b, Config{})
	ctx := context.Background()
	// Rows straight into the index (no files needed for Stat): 10k blobs.
	var ds []blob.Digest
	if err := tr.writeBatchDB(func(add func(hex string, r row) error) error {
		for i := 0; i < 10_000; i++ {
			d := blob.FromBytes([]byte(fmt.Sprint(i)))
			ds = append(ds, d)
			if err := add(d.Encoded(), row{size: 1, atime: 1}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, 1<<16)
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		d := ds[i%len(ds)]
		i++
		t0 := time.Now()
		_, err := tr.Stat(ctx, d)
		el := time.Since(t0)
		if err != nil {
			b.Fatal(err)
		}
		if len(lat) < cap(lat) {
			lat = append(lat, el)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

func BenchmarkOpenRead(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) { benchOpenRead(b, s.size) })
	}
}

// BenchmarkOpenRead64MiB and BenchmarkReadFileSha256Baseline64MiB read the
// same kind of warm 64 MiB file: the tier's verified stream against
// os.ReadFile plus sha256, the floor for reading and checking a file.
func BenchmarkOpenRead64MiB(b *testing.B) { benchOpenRead(b, 64<<20) }

func BenchmarkReadFileSha256Baseline64MiB(b *testing.B) {
	tr, d := benchTier(b, 64<<20)
	p := tr.path(d.Encoded())
	b.SetBytes(64 << 20)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		data, err := os.ReadFile(p)
		if err != nil {
			b.Fatal(err)
		}
		if sum := sha256.Sum256(data); fmt.Sprintf("sha256:%x", sum) != string(d) {
			b.Fatal("digest differs")
		}
	}
}

func benchOpenRead(b *testing.B, size int) {
	tr, d := benchTier(b, size)
	ctx := context.Background()
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		rc, _, err := tr.Open(ctx, d)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil || n != int64(size) {
			b.Fatalf("read %d bytes: %v", n, err)
		}
	}
}

// BenchmarkPut stores a new blob per iteration (temp file, fsync, rename,
// directory fsync, index row).
func BenchmarkPut(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) {
			tr := openTier(b, Config{})
			ctx := context.Background()
			data := randomBytes(7, s.size)
			b.SetBytes(int64(s.size))
			b.ReportAllocs()
			b.ResetTimer()
			i := uint64(0)
			for b.Loop() {
				b.StopTimer()
				i++
				copy(data, fmt.Sprintf("%016x", i)) // a new digest each time
				d := blob.FromBytes(data)
				b.StartTimer()
				if err := tr.Put(ctx, d, int64(len(data)), bytes.NewReader(data)); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := tr.Delete(ctx, d); err != nil { // keep the root small
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkIndexWrite compares the two ways of writing index rows that the
// tier could use: one synced transaction per row, and the WriteBatch that
// access-time flushes use.
func BenchmarkIndexWrite(b *testing.B) {
	b.Run("SyncedTxnPerRow", func(b *testing.B) {
		tr := openTier(b, Config{})
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			key := blobKey(blob.FromBytes([]byte(fmt.Sprint(i))).Encoded())
			txn := tr.db.NewTransaction(true)
			if err := txn.Set(key, encodeRow(row{size: 1, atime: int64(i)})); err != nil {
				b.Fatal(err)
			}
			if err := txn.Commit(); err != nil {
				b.Fatal(err)
			}
			if err := tr.db.Sync(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("WriteBatch", func(b *testing.B) {
		tr := openTier(b, Config{})
		b.ReportAllocs()
		wb := tr.db.NewWriteBatch()
		i := 0
		for b.Loop() {
			i++
			key := blobKey(blob.FromBytes([]byte(fmt.Sprint(i))).Encoded())
			if err := wb.Set(key, encodeRow(row{size: 1, atime: int64(i)})); err != nil {
				b.Fatal(err)
			}
		}
		if err := wb.Flush(); err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkReadVsBaseline64MiB alternates the two reads above within each
// iteration, so load changes on a shared machine hit both alike, and
// reports their throughputs and the ratio tier/baseline.
func BenchmarkReadVsBaseline64MiB(b *testing.B) {
	const size = 64 << 20
	tr, d := benchTier(b, size)
	p := tr.path(d.Encoded())
	ctx := context.Background()
	var tierTime, baseTime time.Duration
	b.SetBytes(2 * size)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		rc, _, err := tr.Open(ctx, d)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil || n != size {
			b.Fatalf("read %d bytes: %v", n, err)
		}
		t1 := time.Now()
		data, err := os.ReadFile(p)
		if err != nil {
			b.Fatal(err)
		}
		if sum := sha256.Sum256(data); fmt.Sprintf("sha256:%x", sum) != string(d) {
			b.Fatal("digest differs")
		}
		t2 := time.Now()
		tierTime += t1.Sub(t0)
		baseTime += t2.Sub(t1)
	}
	b.StopTimer()
	mbps := func(d time.Duration) float64 { return float64(b.N) * size / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(tierTime), "tier-MB/s")
	b.ReportMetric(mbps(baseTime), "baseline-MB/s")
	b.ReportMetric(baseTime.Seconds()/tierTime.Seconds(), "tier/baseline")
}
