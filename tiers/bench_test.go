package tiers_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers"
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

// benchStacks are the stacks the benchmarks measure, built fresh per size.
var benchStacks = []struct {
	name string
	new  func(b *testing.B) *tiers.Stack
}{
	{"memory", func(b *testing.B) *tiers.Stack {
		return tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: benchMem(b, "memory")}}})
	}},
	{"memory+memory", func(b *testing.B) *tiers.Stack {
		return tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: benchMem(b, "top")}, {Tier: benchMem(b, "bottom")}}})
	}},
	{"memory+memory/instrumented", func(b *testing.B) *tiers.Stack {
		m, err := tiers.NewMetrics(nil)
		if err != nil {
			b.Fatal(err)
		}
		return tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: benchMem(b, "top")}, {Tier: benchMem(b, "bottom")}}, Metrics: m})
	}},
}

func benchMem(b *testing.B, name string) *memory.Tier {
	t := memory.New(memory.Config{Name: name, Budget: 512 << 20, MaxBlob: 64 << 20})
	b.Cleanup(func() { t.Close() })
	return t
}

func BenchmarkStackStat(b *testing.B) {
	for _, st := range benchStacks {
		for _, sz := range benchSizes {
			b.Run(st.name+"/"+sz.name, func(b *testing.B) {
				s := st.new(b)
				ctx := context.Background()
				d := tiertest.PutRandom(b, ctx, s, 1, int64(sz.size))
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					if _, err := s.Stat(ctx, d); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkStackOpenRead(b *testing.B) {
	for _, st := range benchStacks {
		for _, sz := range benchSizes {
			b.Run(st.name+"/"+sz.name, func(b *testing.B) {
				s := st.new(b)
				ctx := context.Background()
				d := tiertest.PutRandom(b, ctx, s, 2, int64(sz.size))
				b.SetBytes(int64(sz.size))
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					rc, _, err := s.Open(ctx, d)
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

// BenchmarkStackFill measures a read that misses the top tier and fills it
// from the bottom while streaming (the top is emptied between reads).
func BenchmarkStackFill(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run("memory+memory/"+sz.name, func(b *testing.B) {
			top, bottom := benchMem(b, "top"), benchMem(b, "bottom")
			s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top}, {Tier: bottom}}})
			ctx := context.Background()
			d := tiertest.PutRandom(b, ctx, bottom, 3, int64(sz.size))
			b.SetBytes(int64(sz.size))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				rc, info, err := s.Open(ctx, d)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, rc); err != nil {
					b.Fatal(err)
				}
				rc.Close()
				if info.Tier != "bottom" {
					b.Fatalf("served by %q, want a fill from bottom", info.Tier)
				}
				b.StopTimer()
				if err := top.Delete(ctx, d); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

func BenchmarkStackPut(b *testing.B) {
	for _, st := range benchStacks {
		for _, sz := range benchSizes {
			b.Run(st.name+"/"+sz.name, func(b *testing.B) {
				s := st.new(b)
				ctx := context.Background()
				content, d := tiertest.RandomBytes(4, sz.size)
				r := bytes.NewReader(content)
				b.SetBytes(int64(sz.size))
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					r.Reset(content)
					if err := s.Put(ctx, d, int64(sz.size), r); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					if err := s.Delete(ctx, d); err != nil {
						b.Fatal(fmt.Errorf("delete: %w", err))
					}
					b.StartTimer()
				}
			})
		}
	}
}

var _ blob.Tier = (*tiers.Stack)(nil)
