package layerio

import (
	"io"
	"sync"

	"github.com/strata-oci/strata/internal/safego"
)

// Readahead returns a reader that reads r ahead of its consumer on its own
// goroutine, up to depth chunks of chunk bytes, so that producing the
// stream (downloading, verifying, decompressing) overlaps with consuming it
// (writing files).
//
// The goroutine alone reads r. The returned reader yields r's bytes in
// order and then r's terminal error (io.EOF at a clean end, when r is
// closed at once). Close stops the read-ahead without waiting for a Read of
// r in progress to return (r is closed once it does, so r's reads should
// honour a context the caller cancels); Settle instead waits for it and
// takes r over. The returned reader is not safe
// for concurrent Reads; Close may be called concurrently with Read and more
// than once.
func Readahead(r io.ReadCloser, chunk, depth int) io.ReadCloser {
	if chunk <= 0 {
		chunk = 256 << 10
	}
	if depth <= 0 {
		depth = 4
	}
	ra := &readahead{
		full:   make(chan []byte, depth),
		free:   make(chan []byte, depth+1),
		done:   make(chan struct{}),
		exited: make(chan io.ReadCloser, 1),
	}
	for i := 0; i < depth+1; i++ {
		ra.free <- make([]byte, chunk)
	}
	go ra.run(r)
	return ra
}

type readahead struct {
	full chan []byte // filled chunks; closed after err is set
	free chan []byte
	done chan struct{}
	err  error // terminal error of r; read only after full is closed

	// exited receives r when the goroutine has stopped reading it: the
	// first of Close and settle takes it over.
	exited chan io.ReadCloser

	cur     []byte // unread part of the chunk being consumed
	curBuf  []byte // the whole chunk, to return to free
	closeMu sync.Once
}

func (ra *readahead) run(r io.ReadCloser) {
	defer func() {
		if ra.err == io.EOF { // verified to its end: nothing to settle
			r.Close()
			r = nil
		}
		ra.exited <- r
	}()
	defer close(ra.full)
	// A panic reading r (a decompressor, a verifier) becomes the stream's
	// error instead of ending the process; it is set before full closes.
	defer safego.Recover(&ra.err, "layer read-ahead")
	for {
		var buf []byte
		select {
		case buf = <-ra.free:
		case <-ra.done:
			ra.err = io.ErrClosedPipe
			return
		}
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			select {
			case ra.full <- buf[:n]:
			case <-ra.done:
				ra.err = io.ErrClosedPipe
				return
			}
		}
		switch err {
		case nil:
		case io.ErrUnexpectedEOF:
			ra.err = io.EOF
			return
		default:
			ra.err = err
			return
		}
	}
}

func (ra *readahead) Read(p []byte) (int, error) {
	if len(ra.cur) == 0 {
		if ra.curBuf != nil {
			ra.free <- ra.curBuf[:cap(ra.curBuf)]
			ra.curBuf = nil
		}
		buf, ok := <-ra.full
		if !ok {
			return 0, ra.err
		}
		ra.cur, ra.curBuf = buf, buf
	}
	n := copy(p, ra.cur)
	ra.cur = ra.cur[n:]
	return n, nil
}

// settle stops the read-ahead, waits for its goroutine, and settles the
// stream it read (see Settle).
func (ra *readahead) settle(cause error) error {
	first := false
	ra.closeMu.Do(func() {
		close(ra.done)
		first = true
	})
	if !first {
		return cause // closed before: the stream is gone
	}
	r := <-ra.exited
	if r == nil {
		return cause
	}
	return Settle(r, cause)
}

func (ra *readahead) Close() error {
	ra.closeMu.Do(func() {
		close(ra.done)
		// r is closed once the goroutine's Read in progress returns,
		// without making the caller wait for it.
		go func() {
			if r := <-ra.exited; r != nil {
				r.Close()
			}
		}()
	})
	return nil
}
