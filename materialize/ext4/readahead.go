package ext4

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/strata-oci/strata/internal/safego"
	"github.com/strata-oci/strata/materialize/internal/layerio"
)

const (
	readaheadChunk = 1 << 20
	readaheadDepth = 4
)

// chunkPool recycles read-ahead chunks across layers and conversions: an
// image of hundreds of small layers would otherwise leave a few MiB of
// garbage per layer for the collector to catch up with.
var chunkPool = sync.Pool{New: func() any { return new([readaheadChunk]byte) }}

func getChunk() []byte { return chunkPool.Get().(*[readaheadChunk]byte)[:] }

func putChunk(b []byte) {
	if cap(b) == readaheadChunk {
		chunkPool.Put((*[readaheadChunk]byte)(b[:readaheadChunk]))
	}
}

// readahead reads a stream in its own goroutine, at most readaheadDepth
// chunks of readaheadChunk bytes ahead of its consumer, so that
// decompressing one layer overlaps with flattening and writing the previous
// one while memory stays bounded. Read and Close are for one consumer
// goroutine.
type readahead struct {
	cancel context.CancelFunc
	chunks chan []byte
	free   chan []byte
	done   chan struct{}
	err    error // set by the producer before done is closed
	cur    []byte
	buf    []byte // backing array of cur, returned to free when used up
	eof    bool
	once   sync.Once

	// stop, closed by settle, ends the producer without cancelling the
	// stream's context; handover then receives the stream, which the
	// producer leaves open when it stopped before a clean end.
	stop     chan struct{}
	handover chan io.ReadCloser
}

// errSettling ends a producer that settle stopped.
var errSettling = errors.New("ext4 read-ahead stopped to settle the stream")

// startReadahead opens the stream with open(ctx) in a new goroutine and
// starts reading it. Errors from open or from reading surface from Read.
func startReadahead(ctx context.Context, open func(context.Context) (io.ReadCloser, error)) *readahead {
	ctx, cancel := context.WithCancel(ctx)
	r := &readahead{
		cancel: cancel,
		chunks: make(chan []byte, readaheadDepth),
		free:   make(chan []byte, readaheadDepth+2),
		done:   make(chan struct{}),

		stop:     make(chan struct{}),
		handover: make(chan io.ReadCloser, 1),
	}
	go r.produce(ctx, open)
	return r
}

func (r *readahead) produce(ctx context.Context, open func(context.Context) (io.ReadCloser, error)) {
	defer close(r.done)
	defer close(r.chunks)
	// A panic opening or reading the stream (a decompressor, a verifier)
	// becomes its error instead of ending the process; r.err is set before
	// chunks and done close.
	defer safego.Recover(&r.err, "ext4 layer read-ahead")
	rc, err := open(ctx)
	if err != nil {
		r.err = err
		return
	}
	defer func() {
		if r.err == nil { // a clean end: verified, nothing to settle
			rc.Close()
			return
		}
		r.handover <- rc // closed by Close, or settled by settle
	}()
	for {
		var b []byte
		select {
		case b = <-r.free:
		default:
			b = getChunk()
		}
		n, err := io.ReadFull(rc, b[:cap(b)])
		if n > 0 {
			select {
			case r.chunks <- b[:n]:
			case <-ctx.Done():
				r.err = ctx.Err()
				return
			case <-r.stop:
				r.err = errSettling
				return
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return
		}
		if err != nil {
			r.err = err
			return
		}
	}
}

// Read implements io.Reader.
func (r *readahead) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.buf != nil {
			select {
			case r.free <- r.buf[:cap(r.buf)]:
			default:
				putChunk(r.buf)
			}
			r.buf = nil
		}
		if r.eof {
			return 0, r.finalErr()
		}
		b, ok := <-r.chunks
		if !ok {
			r.eof = true
			continue
		}
		r.cur, r.buf = b, b
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

func (r *readahead) finalErr() error {
	<-r.done
	if r.err != nil {
		return r.err
	}
	return io.EOF
}

// Close stops the producer, waits for it to release the stream, and drops
// every buffer, so that a layer's read-ahead memory is freed as soon as the
// layer is consumed (not when the whole image is done). A stream that
// failed is kept, uncancelled, for settle until dispose.
func (r *readahead) Close() error {
	r.once.Do(func() {
		select {
		case <-r.done: // ended on its own: a failed stream stays for settle
			r.release()
		default:
			r.cancel() // interrupt a read in progress: nothing to settle
			r.release()
			select {
			case rc := <-r.handover:
				rc.Close()
			default:
			}
		}
	})
	return nil
}

// settle settles the stream the producer read, which stopped because of
// cause (see layerio.Settle): the rest of the layer blob is read to learn
// whether its bytes were right. It works before or after Close, until
// dispose; it returns cause when there is nothing to settle.
func (r *readahead) settle(cause error) error {
	r.once.Do(func() {
		close(r.stop) // end the producer without cancelling its stream
		r.release()
	})
	select {
	case rc := <-r.handover:
		return layerio.Settle(rc, cause)
	default: // the stream ended cleanly, never opened, or was cancelled
		return cause
	}
}

// dispose closes r for good: it cancels the stream's context and closes a
// stream kept for settle.
func (r *readahead) dispose() {
	r.Close()
	r.cancel()
	select {
	case rc := <-r.handover:
		rc.Close()
	default:
	}
}

// release waits for the producer to end and drops every buffer.
func (r *readahead) release() {
	for b := range r.chunks {
		putChunk(b)
	}
	<-r.done
	for {
		select {
		case b := <-r.free:
			putChunk(b)
			continue
		default:
		}
		break
	}
	if r.buf != nil {
		putChunk(r.buf)
	}
	r.cur, r.buf = nil, nil
}
