// Package readahead delivers one large blob in order from parts read over
// several ranged streams at once: the part being delivered (the head) is
// read straight into the caller's buffer, the next parts are read ahead
// into buffers reserved from a byte budget shared by the reads of one
// client. The REAPI tier reads with it from ByteStream, the registry
// client from HTTP Range requests; each supplies how a ranged stream is
// opened (and resumed: a stream's own business).
//
// Nothing here verifies content: the blob's one verifier reads the
// Reader. A read-ahead part that fails, stalls or is cut short is taken
// over when the head reaches it (its buffered bytes are delivered, a new
// stream reads the rest), so a fault costs a part's worth of work at most.
// A part the source ends early (io.EOF before its end) ends the whole
// stream there, so the verifier above reports the blob short.
package readahead

import (
	"context"
	"errors"
	"io"
	"sync"
)

// Budget is a byte budget shared by the reads of one client, with a pool
// of part buffers. It never blocks: a read that finds no room reads its
// next part when it gets there, on one stream.
type Budget struct {
	mu       sync.Mutex
	used     int64
	max      int64
	partSize int64
	pool     sync.Pool
}

// NewBudget returns a budget of max bytes for parts of partSize bytes.
func NewBudget(max, partSize int64) *Budget {
	return &Budget{max: max, partSize: partSize}
}

func (b *Budget) tryAcquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.max {
		return false
	}
	b.used += n
	return true
}

func (b *Budget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
}

// InUse returns the bytes reserved by parts read ahead now.
func (b *Budget) InUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// buf returns a buffer of n bytes (at most partSize) from the pool.
func (b *Budget) buf(n int64) []byte {
	if p, ok := b.pool.Get().(*[]byte); ok && int64(cap(*p)) >= n {
		return (*p)[:n]
	}
	return make([]byte, n, max(n, b.partSize))
}

func (b *Budget) put(buf []byte) {
	buf = buf[:0]
	b.pool.Put(&buf)
}

// Config is one blob's parallel read.
type Config struct {
	Size     int64 // the blob's bytes
	PartSize int64 // bytes per part (the budget's part size)
	Streams  int   // parts in flight: the head and Streams-1 read ahead
	Budget   *Budget
	// Open opens a ranged stream of [off, end) of the blob, which returns
	// io.EOF at end (or earlier if the source ends the range early).
	// Streams read ahead get a context that Close cancels.
	Open func(ctx context.Context, off, end int64) (io.ReadCloser, error)
	// Takeover, when not nil, is called when the head takes over a part
	// whose read-ahead stopped short.
	Takeover func()
	// Closed is what Read returns after Close.
	Closed error
}

// Reader delivers a blob in order from its parts (see the package doc).
// Read is not safe for concurrent use; Close may be called once, after or
// instead of the last Read, and waits for the read-ahead goroutines.
type Reader struct {
	cfg Config
	ctx context.Context // the caller's

	parts  []*part
	head   int           // index of the part being delivered
	cur    io.ReadCloser // the head part's stream, or nil
	curOff int64         // offset of cur's next byte
	next   int           // the next part to read ahead

	actx   context.Context // read-ahead streams; cancelled by Close
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
	ferr     error // why the read-ahead stopped before end (io.EOF: the source ended the part early)
	dropped  bool  // the reader no longer needs buf
	consumed int   // bytes delivered from buf (reader side only)
}

// New returns the reader of the blob cfg describes, whose first part is
// read by first, a ranged stream of [0, PartSize) already open. It starts
// reading ahead at once.
func New(ctx context.Context, cfg Config, first io.ReadCloser) *Reader {
	r := &Reader{cfg: cfg, ctx: ctx, cur: first, next: 1}
	for off := int64(0); off < cfg.Size; off += cfg.PartSize {
		r.parts = append(r.parts, &part{off: off, end: min(off+cfg.PartSize, cfg.Size)})
	}
	r.actx, r.cancel = context.WithCancel(ctx)
	r.schedule()
	return r
}

// schedule starts reading ahead the parts after the head, up to Streams-1
// of them, as far as the budget allows; a part that finds no room is
// tried again when the head moves on (or read when the head reaches it).
func (r *Reader) schedule() {
	if r.next <= r.head {
		r.next = r.head + 1
	}
	for r.next < len(r.parts) && r.next < r.head+r.cfg.Streams {
		pt := r.parts[r.next]
		n := pt.end - pt.off
		if !r.cfg.Budget.tryAcquire(n) {
			return
		}
		pt.ahead = true
		pt.cond = sync.NewCond(&pt.mu)
		pt.buf = r.cfg.Budget.buf(n)
		r.next++
		r.wg.Add(1)
		go r.fetch(pt)
	}
}

// fetch reads pt ahead into pt.buf.
func (r *Reader) fetch(pt *part) {
	defer r.wg.Done()
	s, err := r.cfg.Open(r.actx, pt.off, pt.end)
	for err == nil && pt.filled < len(pt.buf) {
		var n int
		n, err = s.Read(pt.buf[pt.filled:]) // only this goroutine writes past filled
		pt.mu.Lock()
		pt.filled += n
		pt.mu.Unlock()
		pt.cond.Broadcast()
	}
	if s != nil {
		s.Close()
	}
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
func (r *Reader) drop(pt *part) {
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

func (r *Reader) free(pt *part) {
	n := len(pt.buf)
	r.cfg.Budget.put(pt.buf)
	pt.buf = nil
	r.cfg.Budget.release(int64(n))
}

func (r *Reader) Read(p []byte) (int, error) {
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
			if err := r.openHead(pt.off, pt.end, false); err != nil {
				return 0, err
			}
		}
		n, err := r.cur.Read(p)
		r.curOff += int64(n)
		switch {
		case err == io.EOF && r.curOff < pt.end:
			// The source ended the part early: so ends the blob, and the
			// verifier reports it short.
			r.err = io.EOF
			return n, io.EOF
		case err == io.EOF:
			r.cur.Close()
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
func (r *Reader) fromAhead(pt *part, p []byte) (int, error) {
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
		r.err = io.EOF // the source ended the part early; see Read
		return 0, io.EOF
	}
	return 0, r.openHead(pt.off+int64(filled), pt.end, true)
}

// openHead opens the head stream of [off, end); takeover marks it as
// resuming a read-ahead that failed.
func (r *Reader) openHead(off, end int64, takeover bool) error {
	if takeover && r.cfg.Takeover != nil {
		r.cfg.Takeover()
	}
	s, err := r.cfg.Open(r.ctx, off, end)
	if err != nil {
		r.err = err
		return err
	}
	r.cur, r.curOff = s, off
	return nil
}

// advance moves the head to the next part and reads further ahead.
func (r *Reader) advance() {
	r.head++
	r.schedule()
}

// Close stops every stream and waits for the read-ahead goroutines.
func (r *Reader) Close() error {
	if r.cur != nil {
		r.cur.Close()
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
		r.err = r.cfg.Closed
		if r.err == nil {
			r.err = errors.New("readahead: read after Close")
		}
	}
	return nil
}
