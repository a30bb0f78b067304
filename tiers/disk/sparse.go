package disk

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sync"
)

// holeBlock is the granularity of hole detection: an all-zero block of this
// size at an aligned offset is skipped rather than written.
const holeBlock = 64 << 10

// copyBufSize is the size of the buffers used to stream blobs in and out.
const copyBufSize = 1 << 20

var (
	zeroBlock = make([]byte, holeBlock)
	bufPool   = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}
)

// sparseWriter writes a file sequentially from offset 0, leaving holes where
// whole aligned blocks are zero, so large mostly-zero blobs (ext4 images)
// occupy little disk. finish sets the final length. Not safe for concurrent
// use.
type sparseWriter struct {
	f   *os.File
	off int64
}

// Write implements io.Writer.
func (w *sparseWriter) Write(p []byte) (int, error) {
	total := len(p)
	runStart, runLen := w.off, 0 // pending run of data to write at runStart
	flush := func() error {
		if runLen == 0 {
			return nil
		}
		_, err := w.f.WriteAt(p[:runLen], runStart)
		return err
	}
	for len(p) > runLen {
		pos := w.off
		n := holeBlock - int(pos%holeBlock)
		if rem := len(p) - runLen; n > rem {
			n = rem
		}
		seg := p[runLen : runLen+n]
		if n == holeBlock && bytes.Equal(seg, zeroBlock) {
			if err := flush(); err != nil {
				return total - len(p), err
			}
			p = p[runLen+n:]
			runLen = 0
			w.off += int64(n)
			runStart = w.off
			continue
		}
		runLen += n
		w.off += int64(n)
	}
	if err := flush(); err != nil {
		return total - len(p), err
	}
	return total, nil
}

// ReadFrom implements io.ReaderFrom with a large buffer, so blob.Copy
// streams in big aligned chunks and hole detection sees whole blocks.
func (w *sparseWriter) ReadFrom(r io.Reader) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var total int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// finish gives the file its full length (a trailing hole is not written).
func (w *sparseWriter) finish() error { return w.f.Truncate(w.off) }
