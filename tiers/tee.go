package tiers

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/strata-oci/strata/blob"
)

// teeChunk is the size of the chunks the tee hands to its sinks.
const teeChunk = 256 << 10

// errSinkClosed is what Read returns on a sink that was closed.
var errSinkClosed = errors.New("tiers: read from a closed stream")

// errNoReaders ends a tee whose every sink went away before the end.
var errNoReaders = errors.New("tiers: every reader of the stream went away")

// sink is one reader of a tee: the tee hands it the source's bytes chunk by
// chunk, and it ends with the error the tee terminates it with (io.EOF after
// a verified source). A sink that is closed, or whose context ends, leaves
// the tee without disturbing the other sinks.
//
// Read and Close may be called from different goroutines; Reads are not
// concurrent with each other.
type sink struct {
	ctx      context.Context // nil: no context of its own
	chunks   chan []byte     // a chunk of the tee's buffer; closed at the end
	consumed chan struct{}   // one token per fully consumed chunk
	gone     chan struct{}   // closed by close
	term     error           // set by the tee before it closes chunks

	mu     sync.Mutex // held while cur is copied, so the tee never reuses a buffer mid-copy
	closed bool
	cur    []byte
	once   sync.Once
	onGone func() // called once when the sink goes away or reaches its end

	digest blob.Digest // what the tee's source was verified against (set by newTee)
	size   int64
}

// VerifiedBlob implements blob.VerifiedReader (see newTee).
func (s *sink) VerifiedBlob() (blob.Digest, int64) {
	if s.digest == "" {
		return "", -1
	}
	return s.digest, s.size
}

func newSink(ctx context.Context) *sink {
	return &sink{
		ctx:      ctx,
		chunks:   make(chan []byte),
		consumed: make(chan struct{}, 1),
		gone:     make(chan struct{}),
	}
}

func (s *sink) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.mu.Lock()
	closed, cur := s.closed, s.cur
	s.mu.Unlock()
	if closed {
		return 0, errSinkClosed
	}
	if len(cur) == 0 {
		var done <-chan struct{}
		if s.ctx != nil {
			done = s.ctx.Done()
		}
		select {
		case c, ok := <-s.chunks:
			if !ok {
				s.finish()
				return 0, s.term
			}
			s.mu.Lock()
			s.cur = c
			s.mu.Unlock()
		case <-s.gone:
			return 0, errSinkClosed
		case <-done:
			err := s.ctx.Err()
			s.Close()
			return 0, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, errSinkClosed
	}
	n := copy(p, s.cur)
	s.cur = s.cur[n:]
	if len(s.cur) == 0 {
		s.cur = nil
		s.consumed <- struct{}{}
	}
	return n, nil
}

// Close leaves the tee. It is safe to call more than once and concurrently
// with Read.
func (s *sink) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		s.cur = nil
		close(s.gone)
	}
	s.mu.Unlock()
	s.finish()
	return nil
}

func (s *sink) finish() {
	s.once.Do(func() {
		if s.onGone != nil {
			s.onGone()
		}
	})
}

// tee copies one source to several sinks, chunk by chunk, each sink reading
// at its own pace within a chunk; the slowest sink sets the pace. The tee
// never buffers more than one chunk.
type tee struct {
	sinks  []*sink
	live   []bool
	buf    []byte
	pooled *[]byte // buf's pool handle, nil if buf is not pooled
	dirty  bool    // run stopped mid-chunk: a sink may still hold buf
}

// chunkPool recycles full-size tee buffers.
var chunkPool = sync.Pool{New: func() any { b := make([]byte, teeChunk); return &b }}

// newTee returns a tee for a source of size bytes (its buffer is no larger
// than the source needs, plus the byte that shows an overlong one). Call
// release when the tee is done and its sinks are terminated.
//
// The tee's caller terminates the sinks with io.EOF only after its source,
// read through a blob.Verifier of d and size, verified: the sinks are then
// blob.VerifiedReaders of d, which spares the tiers reading them a second
// hash.
func newTee(d blob.Digest, size int64, sinks ...*sink) *tee {
	live := make([]bool, len(sinks))
	for i := range live {
		live[i] = true
		sinks[i].digest, sinks[i].size = d, size
	}
	t := &tee{sinks: sinks, live: live}
	if size >= 0 && size < teeChunk {
		t.buf = make([]byte, size+1)
	} else {
		t.pooled = chunkPool.Get().(*[]byte)
		t.buf = *t.pooled
	}
	return t
}

// release returns the tee's buffer to the pool. Every sink must have been
// terminated or gone (no sink reads the buffer any more).
func (t *tee) release() {
	if t.pooled != nil && !t.dirty {
		chunkPool.Put(t.pooled)
		t.pooled, t.buf = nil, nil
	}
}

// alive reports whether sink i is still reading.
func (t *tee) alive(i int) bool { return t.live[i] }

// run copies src to the live sinks until src ends. It returns nil when src
// returned io.EOF (the sinks are then still open: the caller ends each with
// terminate), the error that stopped src, ctx's error, or errNoReaders when
// every sink went away. It never terminates the sinks itself.
func (t *tee) run(ctx context.Context, src io.Reader) error {
	sent := make([]bool, len(t.sinks))
	for {
		n, err := src.Read(t.buf)
		if n > 0 {
			chunk := t.buf[:n]
			for i, s := range t.sinks {
				sent[i] = false
				if !t.live[i] {
					continue
				}
				select {
				case s.chunks <- chunk:
					sent[i] = true
				case <-s.gone:
					t.live[i] = false
				case <-ctx.Done():
					t.dirty = true
					return ctx.Err()
				}
			}
			for i, s := range t.sinks {
				if !sent[i] {
					continue
				}
				select {
				case <-s.consumed:
				case <-s.gone:
					t.live[i] = false
				case <-ctx.Done():
					t.dirty = true
					return ctx.Err()
				}
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if !t.anyLive() {
			return errNoReaders
		}
	}
}

func (t *tee) anyLive() bool {
	for _, l := range t.live {
		if l {
			return true
		}
	}
	return false
}

// terminate ends sink i: its reader gets err once it has consumed everything
// sent before (io.EOF for a complete, verified stream). Call it at most once
// per sink, after run returned.
func (t *tee) terminate(i int, err error) {
	s := t.sinks[i]
	s.term = err
	close(s.chunks)
}
