package sparse

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

const testBlock = 4096

// replay runs ops (a byte string decoded as write/seek/read steps) on a
// Writer and on a byte slice and fails t when they disagree; it returns the
// Writer and the model's final content.
func replay(t *testing.T, f *os.File, ops []byte) (*Writer, []byte) {
	t.Helper()
	s := NewWriter(f, testBlock)
	var model []byte
	pos := 0
	next := func() int {
		if len(ops) == 0 {
			return 0
		}
		b := int(ops[0])
		ops = ops[1:]
		return b
	}
	for len(ops) > 0 {
		switch next() % 4 {
		case 0, 1: // write n bytes: zeros, or zeros with a few data bytes
			n := next() * 97
			b := make([]byte, n)
			for k := next(); k > 0 && n > 0; k-- {
				b[(next()*251+next())%n] = byte(next() | 1)
			}
			w, err := s.Write(b)
			if err != nil || w != n {
				t.Fatalf("Write(%d) = %d, %v", n, w, err)
			}
			if n > 0 { // an empty write extends nothing
				if pos+n > len(model) {
					model = append(model, make([]byte, pos+n-len(model))...)
				}
				copy(model[pos:], b)
				pos += n
			}
		case 2: // seek anywhere up to a little past the end
			pos = (next()*173 + next()) % (len(model) + 2*testBlock)
			if _, err := s.Seek(int64(pos), io.SeekStart); err != nil {
				t.Fatal(err)
			}
		case 3: // read
			b := make([]byte, next()*61)
			n, err := io.ReadFull(s, b)
			want := 0
			if pos < len(model) {
				want = min(len(b), len(model)-pos)
			}
			if n != want || (err != nil && n == len(b)) {
				t.Fatalf("read %d (%v) at %d, want %d", n, err, pos, want)
			}
			if n > 0 && !bytes.Equal(b[:n], model[pos:pos+n]) {
				t.Fatalf("read content differs at %d", pos)
			}
			pos += n
		}
	}
	return s, model
}

// check finishes s and compares the file with model: same bytes, same
// size, and no more bytes written than the model's non-zero blocks need.
func check(t *testing.T, f *os.File, s *Writer, model []byte) {
	t.Helper()
	size, err := s.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if size != int64(len(model)) {
		t.Fatalf("size %d, want %d", size, len(model))
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("file content differs from the plain writes")
	}
}

// TestWriterMatchesPlainWrites replays random writes, seeks and reads on a
// Writer and on a byte slice: the logical content is the same, and a long
// run of zeros written past the end leaves holes.
func TestWriterMatchesPlainWrites(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 1))
		ops := make([]byte, 600)
		for i := range ops {
			ops[i] = byte(rng.IntN(256))
		}
		f, err := os.Create(filepath.Join(t.TempDir(), "s"))
		if err != nil {
			t.Fatal(err)
		}
		s, model := replay(t, f, ops)
		check(t, f, s, model)
		f.Close()
	}
}

// TestZeroRunsTakeNoSpace writes 64 MiB of zeros around two data bytes:
// only the two data blocks reach the disk.
func TestZeroRunsTakeNoSpace(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "z"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := NewWriter(f, testBlock)
	content := io.MultiReader(bytes.NewReader([]byte{1}), io.LimitReader(zeroReader{}, 64<<20), bytes.NewReader([]byte{2}))
	if _, err := s.ReadFrom(content); err != nil {
		t.Fatal(err)
	}
	if size, err := s.Finish(); err != nil || size != 64<<20+2 {
		t.Fatalf("Finish = %d, %v", size, err)
	}
	if s.Written() > 2*testBlock {
		t.Errorf("Written = %d, want at most two blocks", s.Written())
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 1<<20 {
		t.Errorf("file takes %d bytes of disk for 2 bytes of data", st.Blocks*512)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// FuzzWriter replays fuzzed operation lists (see replay).
func FuzzWriter(f *testing.F) {
	f.Add([]byte{0, 50, 0, 2, 60, 3, 1, 1, 40, 1, 0, 0, 9, 3, 30})
	f.Add([]byte{1, 200, 3, 4, 5, 6, 7, 8, 9, 2, 0, 0, 0, 255, 0})
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 4096 {
			return
		}
		file, err := os.CreateTemp(dir, "fuzz-*")
		if err != nil {
			t.Fatal(err)
		}
		defer os.Remove(file.Name())
		defer file.Close()
		s, model := replay(t, file, ops)
		check(t, file, s, model)
	})
}
