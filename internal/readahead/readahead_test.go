package readahead

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
)

const testPart = 1000

// source serves ranges of data; fail decides, per Open, whether the
// stream breaks (after n bytes, with err) before its end.
type source struct {
	data  []byte
	mu    sync.Mutex
	opens []int64 // offsets opened
	fail  func(off int64, nth int) (n int, err error, ok bool)
}

func (s *source) open(_ context.Context, off, end int64) (io.ReadCloser, error) {
	s.mu.Lock()
	nth := 0
	for _, o := range s.opens {
		if o/testPart == off/testPart {
			nth++
		}
	}
	s.opens = append(s.opens, off)
	s.mu.Unlock()
	var r io.Reader = bytes.NewReader(s.data[off:end])
	if s.fail != nil {
		if n, err, ok := s.fail(off, nth); ok {
			if n < 0 {
				return nil, err
			}
			r = io.MultiReader(io.LimitReader(r, int64(n)), errReader{err})
		}
	}
	return io.NopCloser(r), nil
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func newReader(t *testing.T, s *source, streams int, budget *Budget) (*Reader, *int) {
	t.Helper()
	takeovers := 0
	first, err := s.open(context.Background(), 0, min(testPart, int64(len(s.data))))
	if err != nil {
		t.Fatal(err)
	}
	r := New(context.Background(), Config{
		Size: int64(len(s.data)), PartSize: testPart, Streams: streams, Budget: budget,
		Open: s.open, Takeover: func() { takeovers++ },
	}, first)
	return r, &takeovers
}

// TestReader: the blob arrives whole and in order with any number of
// streams and any budget, with parts that break (taken over from where
// they stopped) or cannot be opened at first; the budget is all given
// back at Close.
func TestReader(t *testing.T) {
	data := make([]byte, 10*testPart+123)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	broken := errors.New("connection reset")
	for _, tc := range []struct {
		desc    string
		streams int
		budget  int64
		fail    func(off int64, nth int) (int, error, bool)
	}{
		{desc: "one stream", streams: 1, budget: 0},
		{desc: "four streams", streams: 4, budget: 8 * testPart},
		{desc: "budget of one part", streams: 4, budget: testPart},
		{desc: "no budget", streams: 4, budget: 0},
		{desc: "parts break once", streams: 4, budget: 8 * testPart, fail: func(off int64, nth int) (int, error, bool) {
			return 300, broken, off > 0 && nth == 0 && off%testPart == 0
		}},
		{desc: "parts fail to open once", streams: 4, budget: 8 * testPart, fail: func(off int64, nth int) (int, error, bool) {
			return -1, broken, off > 0 && nth == 0 && off%testPart == 0
		}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			s := &source{data: data, fail: tc.fail}
			budget := NewBudget(tc.budget, testPart)
			r, takeovers := newReader(t, s, tc.streams, budget)
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("ReadAll: %d bytes, %v; equal %v", len(got), err, bytes.Equal(got, data))
			}
			r.Close()
			if n := budget.InUse(); n != 0 {
				t.Fatalf("budget in use after Close: %d", n)
			}
			if tc.fail != nil && tc.streams > 1 && tc.budget > 0 && *takeovers == 0 {
				t.Fatal("no part was taken over, though every read-ahead broke")
			}
			if _, err := r.Read(make([]byte, 1)); err == nil {
				t.Fatal("Read after Close succeeded")
			}
		})
	}
}

// TestReaderShortPart: a part the source ends early ends the blob there
// (the verifier above reports it short), and a head stream that fails
// fails the read.
func TestReaderShortPart(t *testing.T) {
	data := make([]byte, 5*testPart)
	t.Run("ended early", func(t *testing.T) {
		s := &source{data: data, fail: func(off int64, _ int) (int, error, bool) { return 10, io.EOF, off == 2*testPart }}
		r, _ := newReader(t, s, 4, NewBudget(8*testPart, testPart))
		defer r.Close()
		got, err := io.ReadAll(r)
		if err != nil || len(got) != 2*testPart+10 {
			t.Fatalf("ReadAll: %d bytes, %v; want %d bytes and the end", len(got), err, 2*testPart+10)
		}
	})
	t.Run("head fails", func(t *testing.T) {
		broken := errors.New("refused")
		s := &source{data: data, fail: func(off int64, _ int) (int, error, bool) { return -1, broken, off >= 3*testPart }}
		r, _ := newReader(t, s, 1, NewBudget(0, testPart))
		defer r.Close()
		if _, err := io.ReadAll(r); !errors.Is(err, broken) {
			t.Fatalf("err = %v, want the open's", err)
		}
	})
}
