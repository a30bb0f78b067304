// Package sparse writes files that leave holes where the content is zero:
// an all-zero block written past everything written so far is skipped
// instead of written, so it takes no disk space. It is the one hole-making
// writer of the project (ext4 images, extracted overlay files).
package sparse

import (
	"errors"
	"fmt"
	"io"
)

// File is what a Writer writes to: a fresh, empty file (holes are only
// left where nothing was written before).
type File interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
}

// Writer is an io.ReadWriteSeeker over a File that turns all-zero blocks
// (aligned, of the Writer's block size; a shorter zero piece at the end of
// a write too) written at or past the high-water mark (the end of the
// furthest write, written or skipped) into holes. Below the high-water
// mark every write reaches the file, so overwriting data with zeros stays
// correct. Finish gives the file its logical size. A Writer is not safe
// for concurrent use.
type Writer struct {
	f       File
	block   int64
	pos     int64 // logical offset of the next Read/Write
	hwm     int64 // end of the furthest Write (written or skipped)
	written int64 // bytes handed to f.WriteAt
}

// NewWriter returns a Writer on f with holes of block bytes (a power of
// two, at least 512; the file system's block size or a multiple of it).
func NewWriter(f File, block int) *Writer {
	if block < 512 || block&(block-1) != 0 {
		panic(fmt.Sprintf("sparse: block size %d is not a power of two >= 512", block))
	}
	return &Writer{f: f, block: int64(block)}
}

var zeros [64 << 10]byte

// IsZero reports whether b holds only zero bytes.
func IsZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if string(b[:n]) != string(zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// Write implements io.Writer. An error is the File's; n counts the bytes
// consumed (written or skipped) before it.
func (s *Writer) Write(p []byte) (int, error) {
	done := 0
	for len(p) > 0 {
		// Look at one block (or what is left of the current one) at a time.
		n := int(min(s.block-s.pos%s.block, int64(len(p))))
		if s.pos >= s.hwm && IsZero(p[:n]) {
			s.pos += int64(n)
			s.hwm = s.pos
			done += n
			p = p[n:]
			continue
		}
		// Coalesce data blocks into one write, up to the next skippable one.
		end := n
		for end < len(p) {
			m := int(min(s.block, int64(len(p)-end)))
			if s.pos+int64(end) >= s.hwm && IsZero(p[end:end+m]) {
				break
			}
			end += m
		}
		w, err := s.f.WriteAt(p[:end], s.pos)
		s.written += int64(w)
		s.pos += int64(w)
		s.hwm = max(s.hwm, s.pos)
		done += w
		if err != nil {
			return done, err
		}
		p = p[end:]
	}
	return done, nil
}

// ReadFrom implements io.ReaderFrom with a buffer of whole blocks, so that
// hole detection sees aligned blocks whatever r's reads return.
func (s *Writer) ReadFrom(r io.Reader) (int64, error) {
	buf := make([]byte, max(s.block, 256<<10))
	var total int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			w, werr := s.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total, werr
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// Read implements io.Reader over the logical content (skipped zeros read
// as zeros).
func (s *Writer) Read(p []byte) (int, error) {
	if s.pos >= s.hwm {
		return 0, io.EOF
	}
	if rem := s.hwm - s.pos; int64(len(p)) > rem {
		p = p[:rem]
	}
	n, err := s.f.ReadAt(p, s.pos)
	if errors.Is(err, io.EOF) {
		// Skipped zeros past the file's current end.
		clear(p[n:])
		n, err = len(p), nil
	}
	s.pos += int64(n)
	return n, err
}

// Seek implements io.Seeker.
func (s *Writer) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += s.pos
	case io.SeekEnd:
		off += s.hwm
	default:
		return s.pos, fmt.Errorf("sparse: seek: bad whence %d", whence)
	}
	if off < 0 {
		return s.pos, fmt.Errorf("sparse: seek to negative offset %d", off)
	}
	s.pos = off
	return off, nil
}

// Finish sets the file's size to the logical size (the high-water mark)
// and returns it.
func (s *Writer) Finish() (int64, error) {
	if err := s.f.Truncate(s.hwm); err != nil {
		return 0, err
	}
	return s.hwm, nil
}

// Size is the logical size: the end of the furthest write.
func (s *Writer) Size() int64 { return s.hwm }

// Written is the number of bytes written to the file (holes excluded).
func (s *Writer) Written() int64 { return s.written }
