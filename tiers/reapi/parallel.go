package reapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/strata-oci/strata/blob"
)

// budget is a byte budget shared by the reads of a tier. It never blocks:
// a caller that finds no room does without.
type budget struct {
	mu        sync.Mutex
	used, max int64
}

func (b *budget) tryAcquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.max {
		return false
	}
	b.used += n
	return true
}

func (b *budget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
}

func (b *budget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// parallelReader delivers a blob in order from parts [off, end) of
// Parallel.PartSize bytes, each read with its own ranged identity
// ByteStream Read (see ParallelConfig). The part being delivered (the head)
// is read straight into the caller's buffer by a resumingReader; the next
// Streams-1 parts are read ahead by goroutines into buffers reserved from
// the tier's read-ahead budget. A read-ahead part that fails (after its own
// resumes), stalls or is cut short is taken over when the head reaches it:
// its buffered bytes are delivered and a new stream reads the rest of the
// part. A part the server ends early (io.EOF before its end) ends the whole
// stream there, so the verifier above reports the blob short.
//
// Its bytes are not verified here: the blob's one Verifier reads it. Read
// is not safe for concurrent use; close may be called once, after or
// instead of the last Read, and waits for the read-ahead goroutines.
type parallelReader struct {
	t         *Tier
	ctx       context.Context // the caller's
	d         blob.Digest
	size      int64
	onCorrupt func(error)

	parts []*part
	head  int             // index of the part being delivered
	cur   *resumingReader // the head part's stream, or nil
	next  int             // the next part to read ahead

	actx   context.Context // read-ahead streams; cancelled by close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	err    error
}

// part is one range of the blob, and its read-ahead state.
type part struct {
	off, end int64

	// Set when the part is read ahead; buf, filled, done and ferr are
	// guarded by mu and written only by the read-ahead goroutine.
	ahead    bool
	mu       sync.Mutex
	cond     *sync.Cond
	buf      []byte // end-off bytes
	filled   int
	done     bool
	ferr     error // why the read-ahead stopped before end (io.EOF: the server ended the part early)
	dropped  bool  // the reader no longer needs buf
	consumed int   // bytes delivered from buf (reader side only)
}

// newParallelReader returns the reader of d (size bytes) whose first part
// is read by first, a ranged resumingReader already open at offset 0. It
// starts reading ahead at once.
func (t *Tier) newParallelReader(ctx context.Context, d blob.Digest, size int64, first *resumingReader, onCorrupt func(error)) *parallelReader {
	ps := t.cfg.Parallel.PartSize
	r := &parallelReader{t: t, ctx: ctx, d: d, size: size, onCorrupt: onCorrupt, cur: first, next: 1}
	for off := int64(0); off < size; off += ps {
		r.parts = append(r.parts, &part{off: off, end: min(off+ps, size)})
	}
	r.actx, r.cancel = context.WithCancel(ctx)
	r.schedule()
	return r
}

// partReader returns a ranged reader of [off, end) of the blob.
func (r *parallelReader) partReader(ctx context.Context, off, end int64) *resumingReader {
	return &resumingReader{t: r.t, ctx: ctx, d: r.d, size: r.size, onCorrupt: r.onCorrupt,
		ranged: true, off: off, end: end}
}

// schedule starts reading ahead the parts after the head, up to Streams-1
// of them, as far as the tier's budget allows; a part that finds no room
// is tried again when the head moves on (or read when the head reaches it).
func (r *parallelReader) schedule() {
	if r.next <= r.head {
		r.next = r.head + 1
	}
	for r.next < len(r.parts) && r.next < r.head+r.t.cfg.Parallel.Streams {
		pt := r.parts[r.next]
		n := pt.end - pt.off
		if !r.t.readAhead.tryAcquire(n) {
			return
		}
		pt.ahead = true
		pt.cond = sync.NewCond(&pt.mu)
		pt.buf = r.t.partBuf()[:n]
		r.next++
		r.wg.Add(1)
		go r.fetch(pt)
	}
}

// partBuf returns a buffer of cap PartSize.
func (t *Tier) partBuf() []byte {
	if b, ok := t.parts.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, t.cfg.Parallel.PartSize)
}

// fetch reads pt ahead into pt.buf.
func (r *parallelReader) fetch(pt *part) {
	defer r.wg.Done()
	rr := r.partReader(r.actx, pt.off, pt.end)
	err := rr.open()
	for err == nil && pt.filled < len(pt.buf) {
		var n int
		n, err = rr.Read(pt.buf[pt.filled:]) // only this goroutine writes past filled
		pt.mu.Lock()
		pt.filled += n
		pt.mu.Unlock()
		pt.cond.Broadcast()
	}
	rr.close()
	pt.mu.Lock()
	pt.done = true
	if pt.filled < len(pt.buf) {
		pt.ferr = err
	}
	free := pt.dropped
	pt.mu.Unlock()
	pt.cond.Broadcast()
	if free {
		r.free(pt)
	}
}

// drop tells pt's read-ahead that its buffer is no longer needed; the
// buffer is freed once the goroutine is done with it.
func (r *parallelReader) drop(pt *part) {
	pt.mu.Lock()
	if pt.dropped {
		pt.mu.Unlock()
		return
	}
	pt.dropped = true
	free := pt.done
	pt.mu.Unlock()
	if free {
		r.free(pt)
	}
}

func (r *parallelReader) free(pt *part) {
	n := len(pt.buf)
	b := pt.buf[:0]
	pt.buf = nil
	r.t.parts.Put(&b)
	r.t.readAhead.release(int64(n))
}

func (r *parallelReader) Read(p []byte) (int, error) {
	for {
		if r.err != nil {
			return 0, r.err
		}
		if r.head == len(r.parts) {
			return 0, io.EOF
		}
		if len(p) == 0 {
			return 0, nil
		}
		pt := r.parts[r.head]
		if r.cur == nil && pt.ahead && !pt.dropped {
			n, err := r.fromAhead(pt, p)
			if n > 0 || err != nil {
				return n, err
			}
			continue
		}
		if r.cur == nil {
			// Not read ahead (no room in the budget): read it now.
			if err := r.openHead(pt, pt.off, false); err != nil {
				return 0, err
			}
		}
		n, err := r.cur.Read(p)
		switch {
		case err == io.EOF && r.cur.off < pt.end:
			// The server ended the part early: so ends the blob, and the
			// verifier reports it short.
			r.err = io.EOF
			return n, io.EOF
		case err == io.EOF:
			r.cur.close()
			r.cur = nil
			r.advance()
			if n > 0 {
				return n, nil
			}
			continue
		case err != nil:
			r.err = err
		}
		return n, err
	}
}

// fromAhead delivers bytes of pt, read ahead, waiting for them if need be;
// when the read-ahead stopped short, it hands the rest of the part to a new
// head stream (n == 0, err == nil: call again).
func (r *parallelReader) fromAhead(pt *part, p []byte) (int, error) {
	pt.mu.Lock()
	for pt.filled == pt.consumed && !pt.done {
		pt.cond.Wait()
	}
	filled, done, ferr := pt.filled, pt.done, pt.ferr
	pt.mu.Unlock()
	if filled > pt.consumed {
		n := copy(p, pt.buf[pt.consumed:filled])
		pt.consumed += n
		if pt.consumed == len(pt.buf) {
			r.drop(pt)
			r.advance()
		}
		return n, nil
	}
	if !done {
		return 0, nil
	}
	// The read-ahead stopped at filled < len(buf).
	r.drop(pt)
	if ferr == io.EOF {
		r.err = io.EOF // the server ended the part early; see Read
		return 0, io.EOF
	}
	return 0, r.openHead(pt, pt.off+int64(filled), true)
}

// openHead opens the head stream for pt from off; takeover marks it as
// resuming a read-ahead that failed.
func (r *parallelReader) openHead(pt *part, off int64, takeover bool) error {
	if takeover {
		r.t.resumes.Add(1)
	}
	rr := r.partReader(r.ctx, off, pt.end)
	if err := rr.open(); err != nil {
		if errors.Is(err, blob.ErrNotFound) {
			// Evicted mid-read: the read fails like a broken stream.
			r.t.forget(r.d)
			err = fmt.Errorf("reapi %q: read %s: %w: the blob vanished at byte %d (%v)",
				r.t.cfg.Name, r.d, blob.ErrUnavailable, off, err)
		}
		r.err = err
		return err
	}
	r.cur = rr
	return nil
}

// advance moves the head to the next part and reads further ahead.
func (r *parallelReader) advance() {
	r.head++
	r.schedule()
}

// close stops every stream and waits for the read-ahead goroutines.
func (r *parallelReader) close() {
	if r.cur != nil {
		r.cur.close()
		r.cur = nil
	}
	r.cancel()
	for _, pt := range r.parts {
		if pt.ahead {
			r.drop(pt)
		}
	}
	r.wg.Wait()
	if r.err == nil {
		r.err = errReaderClosed
	}
}
