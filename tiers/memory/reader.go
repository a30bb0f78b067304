package memory

import (
	"context"
	"errors"
	"io"
)

// errReaderClosed is returned by Reads after Close.
var errReaderClosed = errors.New("memory tier: read after Close")

// reader serves an immutable stored slice. Every Read first checks ctx, so a
// cancelled caller stops within one Read.
type reader struct {
	ctx    context.Context
	data   []byte
	off    int
	closed bool
}

// Read implements io.Reader.
func (r *reader) Read(p []byte) (int, error) {
	if r.closed {
		return 0, errReaderClosed
	}
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	if r.off >= len(r.data) {
		return 0, io.EOF
	}
	n := copy(p, r.data[r.off:])
	r.off += n
	return n, nil
}

// WriteTo implements io.WriterTo, writing in chunks so that cancellation is
// noticed between them.
func (r *reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if r.closed {
			return total, errReaderClosed
		}
		if err := r.ctx.Err(); err != nil {
			return total, err
		}
		if r.off >= len(r.data) {
			return total, nil
		}
		chunk := r.data[r.off:min(r.off+putChunk, len(r.data))]
		n, err := w.Write(chunk)
		r.off += n
		total += int64(n)
		if err != nil {
			return total, err
		}
		if n < len(chunk) {
			return total, io.ErrShortWrite
		}
	}
}

// Close releases the reader; later Reads fail. It always returns nil.
func (r *reader) Close() error {
	r.closed = true
	r.data = nil
	return nil
}
