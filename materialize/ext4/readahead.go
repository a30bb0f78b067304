package ext4

import (
	"context"
	"io"
	"sync"

	"github.com/strata-oci/strata/internal/safego"
)

const (
	readaheadChunk = 1 << 20
	readaheadDepth = 4
)

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
}

// startReadahead opens the stream with open(ctx) in a new goroutine and
// starts reading it. Errors from open or from reading surface from Read.
func startReadahead(ctx context.Context, open func(context.Context) (io.ReadCloser, error)) *readahead {
	ctx, cancel := context.WithCancel(ctx)
	r := &readahead{
		cancel: cancel,
		chunks: make(chan []byte, readaheadDepth),
		free:   make(chan []byte, readaheadDepth+2),
		done:   make(chan struct{}),
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
	defer rc.Close()
	for {
		var b []byte
		select {
		case b = <-r.free:
		default:
			b = make([]byte, readaheadChunk)
		}
		n, err := io.ReadFull(rc, b[:cap(b)])
		if n > 0 {
			select {
			case r.chunks <- b[:n]:
			case <-ctx.Done():
				r.err = ctx.Err()
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
// layer is consumed (not when the whole image is done).
func (r *readahead) Close() error {
	r.once.Do(func() {
		r.cancel()
		for range r.chunks {
		}
		<-r.done
		for {
			select {
			case <-r.free:
				continue
			default:
			}
			break
		}
		r.cur, r.buf = nil, nil
	})
	return nil
}
