package reapi

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/strata-oci/strata/blob"
)

// benchSizes: a config-sized blob (batch path) and a layer-sized one
// (ByteStream path).
var benchSizes = []struct {
	name string
	n    int
}{
	{"64KiB", 64 << 10},
	{"32MiB", 32 << 20},
}

var benchModes = []struct {
	name string
	o    fakeOptions
}{
	{"identity", fakeOptions{}},
	{"zstd", fakeOptions{zstd: true}},
}

// BenchmarkPut uploads a fresh blob per iteration (FindMissingBlobs,
// upload, size index entry) to the in-process fake.
func BenchmarkPut(b *testing.B) {
	for _, m := range benchModes {
		for _, sz := range benchSizes {
			b.Run(m.name+"/"+sz.name, func(b *testing.B) {
				f := startFake(b, m.o)
				tier := newTier(b, f, nil)
				data := compressibleBlob(sz.n)
				b.ReportAllocs()
				b.SetBytes(int64(sz.n))
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					data[0] = byte(i) // a new blob each time
					data[1] = byte(i >> 8)
					d := blob.FromBytes(data)
					if err := tier.Put(context.Background(), d, int64(len(data)), bytes.NewReader(data)); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					f.CAS.Clear() // keep the fake's memory bounded
					f.AC.Clear()
					b.StartTimer()
				}
			})
		}
	}
}

// BenchmarkOpen streams and verifies one stored blob per iteration.
func BenchmarkOpen(b *testing.B) {
	for _, m := range benchModes {
		for _, sz := range benchSizes {
			b.Run(m.name+"/"+sz.name, func(b *testing.B) {
				f := startFake(b, m.o)
				tier := newTier(b, f, nil)
				data := compressibleBlob(sz.n)
				d := blob.FromBytes(data)
				if err := tier.Put(context.Background(), d, int64(len(data)), bytes.NewReader(data)); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				b.SetBytes(int64(sz.n))
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					rc, _, err := tier.Open(context.Background(), d)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := io.Copy(io.Discard, rc); err != nil {
						b.Fatal(err)
					}
					rc.Close()
				}
			})
		}
	}
}

// BenchmarkOpenLarge compares one stream with parallel ranged reads of one
// 256 MiB incompressible blob (a layer), over real gRPC on loopback against
// the SDK fake, in one run: go test -bench OpenLarge -benchtime 5x. The
// fake serves from memory, so it measures the client and the transport;
// on a 2-core machine the fake competes with the reader for CPU.
func BenchmarkOpenLarge(b *testing.B) {
	const size = 256 << 20
	data := gzipLike(11, size)
	d := blob.FromBytes(data)
	for _, m := range []struct {
		name string
		mod  func(*Config)
	}{
		{"one-stream", func(c *Config) { c.Parallel.Threshold = -1 }},
		{"parallel", nil}, // the defaults: 8 MiB parts, 4 streams
	} {
		b.Run(m.name, func(b *testing.B) {
			f := startFake(b, fakeOptions{})
			tier := newTier(b, f, m.mod)
			if err := tier.Put(context.Background(), d, size, bytes.NewReader(data)); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(size)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				rc, _, err := tier.Open(context.Background(), d)
				if err != nil {
					b.Fatal(err)
				}
				if n, err := io.Copy(io.Discard, rc); err != nil || n != size {
					b.Fatal(n, err)
				}
				rc.Close()
			}
		})
	}
}
