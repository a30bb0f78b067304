package tiers_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/disk"
	"github.com/strata-oci/strata/tiers/memory"
	"github.com/strata-oci/strata/tiers/tiertest"
)

// openDisk opens a disk tier at root, closed at the end of the test.
func openDisk(t testing.TB, root string) *disk.Tier {
	t.Helper()
	d, err := disk.Open(disk.Config{Root: root, Name: "disk"})
	if err != nil {
		t.Fatalf("disk.Open(%s) = %v", root, err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// memOverDisk is the default shape: a memory tier over a disk tier.
func memOverDisk(t testing.TB, root string, m *tiers.Metrics) (*tiers.Stack, *memory.Tier, *disk.Tier) {
	t.Helper()
	mem := newMem(t, "memory", 0)
	dk := openDisk(t, root)
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: mem}, {Tier: dk}}, Metrics: m})
	t.Cleanup(func() { s.Close() })
	return s, mem, dk
}

// TestConformanceStackDisk runs the Tier contract against a memory tier over
// a disk tier, including a close/reopen cycle (the disk half persists).
func TestConformanceStackDisk(t *testing.T) {
	var (
		mu    sync.Mutex
		roots = map[blob.Tier]string{}
	)
	newStack := func(t *testing.T, root string) blob.Tier {
		s, _, _ := memOverDisk(t, root, newMetrics(t))
		mu.Lock()
		roots[s] = root
		mu.Unlock()
		return s
	}
	tiertest.Run(t, tiertest.Config{
		New: func(t *testing.T) blob.Tier { return newStack(t, t.TempDir()) },
		Reopen: func(t *testing.T, old blob.Tier) blob.Tier {
			mu.Lock()
			root := roots[old]
			mu.Unlock()
			if err := old.Close(); err != nil {
				t.Fatalf("Close before reopen: %v", err)
			}
			return newStack(t, root)
		},
		MaxBlob:          0,    // the disk tier takes what memory declines
		DeleteRacesReads: true, // a fill may write back a blob deleted meanwhile
		// The disk half rots (a flipped byte in its file); the memory half
		// cannot, so it forgets the blob and the read goes to disk.
		Corrupt: func(t *testing.T, tier blob.Tier, d blob.Digest) {
			mu.Lock()
			root := roots[tier]
			mu.Unlock()
			s := tier.(*tiers.Stack)
			if err := s.Tiers()[0].Tier.Delete(context.Background(), d); err != nil && !errors.Is(err, blob.ErrNotFound) {
				t.Fatal(err)
			}
			flipByte(t, root, d)
		},
	})
}

// flipByte damages d's file in the disk tier at root.
func flipByte(t *testing.T, root string, d blob.Digest) {
	t.Helper()
	path := filepath.Join(root, "blobs", "sha256", d.Encoded()[:2], d.Encoded())
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open the stored file: %v", err)
	}
	defer f.Close()
	b := make([]byte, 1)
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	off := fi.Size() / 2
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{b[0] ^ 0x80}, off); err != nil {
		t.Fatal(err)
	}
}

// A blob that rotted on disk is caught while it streams through the stack:
// the caller gets a mismatch, the memory tier gets nothing, the disk tier
// drops the file, and the next Open is a clean miss.
func TestStackDiskRotNotFilledAbove(t *testing.T) {
	root := t.TempDir()
	s, mem, dk := memOverDisk(t, root, nil)
	ctx := context.Background()
	for _, size := range []int{1000, 3 << 20} {
		want, d := tiertest.RandomBytes(int64(size), size)
		if err := dk.Put(ctx, d, int64(size), bytes.NewReader(want)); err != nil {
			t.Fatal(err)
		}
		flipByte(t, root, d)

		_, _, err := readAll(ctx, s, d)
		if !errors.Is(err, blob.ErrMismatch) {
			t.Fatalf("%d bytes: read of a rotted blob = %v, want ErrMismatch", size, err)
		}
		if has(t, mem, d) {
			t.Errorf("%d bytes: rotted bytes were committed into memory", size)
		}
		if _, _, err := s.Open(ctx, d); !errors.Is(err, blob.ErrNotFound) {
			t.Errorf("%d bytes: Open after the rot was found = %v, want ErrNotFound", size, err)
		}
	}
}

// A blob on disk is filled into memory by the first full read.
func TestStackDiskWriteBack(t *testing.T) {
	s, mem, dk := memOverDisk(t, t.TempDir(), nil)
	ctx := context.Background()
	want, d := tiertest.RandomBytes(77, 5<<20)
	if err := dk.Put(ctx, d, int64(len(want)), bytes.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	for i, wantTier := range []string{"disk", "memory"} {
		got, info, err := readAll(ctx, s, d)
		if err != nil || !bytes.Equal(got, want) || info.Tier != wantTier {
			t.Fatalf("read %d: %d bytes, served by %q, %v; want %q", i+1, len(got), info.Tier, err, wantTier)
		}
	}
	if !has(t, mem, d) {
		t.Error("memory not filled")
	}
}

func BenchmarkStackDisk(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run("Stat/"+sz.name, func(b *testing.B) {
			s, _, _ := memOverDisk(b, b.TempDir(), nil)
			ctx := context.Background()
			d := tiertest.PutRandom(b, ctx, s, 1, int64(sz.size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Stat(ctx, d); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("OpenRead/fromDisk/"+sz.name, func(b *testing.B) {
			// The memory tier declines everything: every read streams
			// from disk through the stack.
			mem := memory.New(memory.Config{Name: "memory", MaxBlob: 1})
			b.Cleanup(func() { mem.Close() })
			s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: mem}, {Tier: openDisk(b, b.TempDir())}}})
			ctx := context.Background()
			d := tiertest.PutRandom(b, ctx, s, 2, int64(sz.size))
			b.SetBytes(int64(sz.size))
			b.ReportAllocs()
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
		b.Run("Put/"+sz.name, func(b *testing.B) {
			s, _, _ := memOverDisk(b, b.TempDir(), nil)
			ctx := context.Background()
			content, d := tiertest.RandomBytes(4, sz.size)
			r := bytes.NewReader(content)
			b.SetBytes(int64(sz.size))
			b.ReportAllocs()
			for b.Loop() {
				r.Reset(content)
				if err := s.Put(ctx, d, int64(sz.size), r); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := s.Delete(ctx, d); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
