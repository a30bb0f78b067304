package ext4

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// TestSparseFileMatchesPlainWrites replays random writes, seeks and reads
// on a sparseFile and on a byte slice and compares the results; zero blocks
// past the high-water mark must become holes.
func TestSparseFileMatchesPlainWrites(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 1))
		f, err := os.Create(filepath.Join(t.TempDir(), "s"))
		if err != nil {
			t.Fatal(err)
		}
		s := newSparseFile(f)
		var model []byte
		pos := 0
		for range 200 {
			switch rng.IntN(4) {
			case 0, 1: // write: zeros, data, or a mix
				n := rng.IntN(3 * fsBlockSize)
				b := make([]byte, n)
				if rng.IntN(2) == 0 {
					for i := rng.IntN(n + 1); i < n; i += 1 + rng.IntN(5000) {
						b[i] = byte(1 + rng.IntN(255))
					}
				}
				if _, err := s.Write(b); err != nil {
					t.Fatal(err)
				}
				if pos+n > len(model) {
					model = append(model, make([]byte, pos+n-len(model))...)
				}
				copy(model[pos:], b)
				pos += n
			case 2: // seek back or forward
				pos = rng.IntN(len(model) + 2*fsBlockSize)
				if _, err := s.Seek(int64(pos), io.SeekStart); err != nil {
					t.Fatal(err)
				}
			case 3: // read
				b := make([]byte, rng.IntN(2*fsBlockSize))
				n, err := io.ReadFull(s, b)
				want := 0
				if pos < len(model) {
					want = min(len(b), len(model)-pos)
				}
				if n != want || (err != nil && n == len(b)) {
					t.Fatalf("seed %d: read %d (%v), want %d", seed, n, err, want)
				}
				if n > 0 && !bytes.Equal(b[:n], model[pos:pos+n]) {
					t.Fatalf("seed %d: read content differs at %d", seed, pos)
				}
				pos += n
				s.Seek(int64(pos), io.SeekStart)
			}
		}
		size, err := s.Finish()
		if err != nil {
			t.Fatal(err)
		}
		if size != int64(len(model)) {
			t.Fatalf("seed %d: size %d, want %d", seed, size, len(model))
		}
		got, _ := os.ReadFile(f.Name())
		if !bytes.Equal(got, model) {
			t.Fatalf("seed %d: file content differs from the model", seed)
		}
		f.Close()
	}
}

func TestSparseFileMakesHoles(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := newSparseFile(f)
	s.Write([]byte("head"))
	s.Write(make([]byte, 64<<20)) // 64 MiB of zeros
	s.Write([]byte("tail"))
	size, err := s.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if size != 64<<20+8 {
		t.Fatalf("size %d", size)
	}
	if alloc := allocated(t, f.Name()); alloc > 1<<20 {
		t.Errorf("64 MiB of zeros allocate %d bytes", alloc)
	}
}

func BenchmarkSparseWrite(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "s"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB of data
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	s := newSparseFile(f)
	for b.Loop() {
		s.Seek(0, io.SeekStart)
		s.Write(buf)
	}
}
