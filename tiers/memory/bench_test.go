package memory_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers/memory"
	"github.com/strata-oci/strata/tiers/tiertest"
)

var benchSizes = []struct {
	name string
	size int
}{
	{"1KiB", 1 << 10},
	{"1MiB", 1 << 20},
	{"64MiB", 64 << 20},
}

// benchTier returns a tier holding one blob of size bytes.
func benchTier(b *testing.B, size int) (*memory.Tier, blob.Digest) {
	b.Helper()
	tier := memory.New(memory.Config{})
	b.Cleanup(func() { tier.Close() })
	content, d := tiertest.RandomBytes(1, size)
	tiertest.PutBytes(b, context.Background(), tier, content)
	return tier, d
}

// BenchmarkStat measures a Stat hit. SetBytes is the blob size, so MB/s is
// the rate at which Stat can confirm content, not bytes moved.
func BenchmarkStat(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) {
			tier, d := benchTier(b, s.size)
			ctx := context.Background()
			b.SetBytes(int64(s.size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tier.Stat(ctx, d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpenRead measures Open, reading every byte into a reused buffer,
// and Close.
func BenchmarkOpenRead(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) {
			tier, d := benchTier(b, s.size)
			ctx := context.Background()
			buf := make([]byte, 32<<10)
			b.SetBytes(int64(s.size))
			b.ReportAllocs()
			for b.Loop() {
				rc, _, err := tier.Open(ctx, d)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{rc}, buf); err != nil {
					b.Fatal(err)
				}
				rc.Close()
			}
		})
	}
}

// BenchmarkOpenReadHash is Open plus sha256 of the stream: what a caller
// that verifies what it reads pays.
func BenchmarkOpenReadHash(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) {
			tier, d := benchTier(b, s.size)
			ctx := context.Background()
			h := sha256.New()
			b.SetBytes(int64(s.size))
			b.ReportAllocs()
			for b.Loop() {
				rc, _, err := tier.Open(ctx, d)
				if err != nil {
					b.Fatal(err)
				}
				h.Reset()
				if _, err := io.Copy(h, rc); err != nil {
					b.Fatal(err)
				}
				rc.Close()
			}
		})
	}
}

// BenchmarkPut measures a verified Put of a new blob (read, hash, store)
// followed by its Delete, so every iteration stores afresh.
func BenchmarkPut(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) {
			tier := memory.New(memory.Config{})
			b.Cleanup(func() { tier.Close() })
			ctx := context.Background()
			content, d := tiertest.RandomBytes(1, s.size)
			r := bytes.NewReader(content)
			b.SetBytes(int64(s.size))
			b.ReportAllocs()
			for b.Loop() {
				r.Reset(content)
				if err := tier.Put(ctx, d, int64(s.size), r); err != nil {
					b.Fatal(err)
				}
				if err := tier.Delete(ctx, d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLatency1KiB reports the p50 and p99 of single Stat and Open (+
// read + Close) calls on a 1 KiB blob held among 10,000 others. Each sample
// times one call, so the figures include one clock read (tens of ns).
func BenchmarkLatency1KiB(b *testing.B) {
	ctx := context.Background()
	tier := memory.New(memory.Config{})
	b.Cleanup(func() { tier.Close() })
	var digests []blob.Digest
	for i := range 10_000 {
		content, _ := tiertest.RandomBytes(int64(i), 1<<10)
		digests = append(digests, tiertest.PutBytes(b, ctx, tier, content))
	}
	buf := make([]byte, 2<<10)
	ops := []struct {
		name string
		fn   func(d blob.Digest)
	}{
		{"Stat", func(d blob.Digest) {
			if _, err := tier.Stat(ctx, d); err != nil {
				b.Fatal(err)
			}
		}},
		{"Open", func(d blob.Digest) {
			rc, _, err := tier.Open(ctx, d)
			if err != nil {
				b.Fatal(err)
			}
			if n, _ := io.ReadFull(rc, buf[:1<<10]); n != 1<<10 {
				b.Fatalf("read %d bytes", n)
			}
			rc.Close()
		}},
	}
	for _, op := range ops {
		b.Run(op.name, func(b *testing.B) {
			b.ReportAllocs()
			samples := make([]time.Duration, 0, 1<<20)
			i := 0
			for b.Loop() {
				d := digests[i%len(digests)]
				i++
				start := time.Now()
				op.fn(d)
				if len(samples) < cap(samples) {
					samples = append(samples, time.Since(start))
				}
			}
			slices.Sort(samples)
			b.ReportMetric(float64(percentile(samples, 50).Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(percentile(samples, 99).Nanoseconds()), "p99-ns")
		})
	}
}

func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}

// Example_budget shows a memory tier declining a blob above its per-blob
// limit so a stack can store it in a lower tier.
func Example_budget() {
	tier := memory.New(memory.Config{Budget: 1 << 20, MaxBlob: 1 << 10})
	defer tier.Close()
	big := bytes.Repeat([]byte("x"), 2<<10)
	err := tier.Put(context.Background(), blob.FromBytes(big), int64(len(big)), bytes.NewReader(big))
	fmt.Println(errors.Is(err, blob.ErrTooLarge))
	// Output: true
}

// BenchmarkBaselineSHA256 is sha256 over an in-memory slice of each size:
// the floor for a verified Put and for a caller hashing what it reads.
func BenchmarkBaselineSHA256(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) {
			content, _ := tiertest.RandomBytes(1, s.size)
			b.SetBytes(int64(s.size))
			b.ReportAllocs()
			for b.Loop() {
				sha256.Sum256(content)
			}
		})
	}
}
