package ext4

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// sparseFile is an io.ReadWriteSeeker over a fresh, empty file that turns
// all-zero 4 KiB blocks written past everything written so far into holes:
// it skips them instead of writing them. Below that high-water mark every
// write goes to disk, so overwriting data with zeros stays correct. Finish
// sets the file's size to the logical size. Not safe for concurrent use.
type sparseFile struct {
	f   *os.File
	pos int64 // logical offset of the next Read/Write
	hwm int64 // end of the furthest Write (written or skipped)
}

func newSparseFile(f *os.File) *sparseFile { return &sparseFile{f: f} }

var zeroBlock [fsBlockSize]byte

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if string(b[:n]) != string(zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// Write implements io.Writer.
func (s *sparseFile) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		// Split at block boundaries so that each piece is one block or less.
		n := int(fsBlockSize - s.pos%fsBlockSize)
		n = min(n, len(p))
		chunk := p[:n]
		if s.pos < s.hwm || !isZero(chunk) {
			// Coalesce consecutive non-zero blocks into one write.
			end := n
			for end < len(p) {
				m := min(fsBlockSize, len(p)-end)
				if s.pos+int64(end) >= s.hwm && isZero(p[end:end+m]) {
					break
				}
				end += m
			}
			chunk = p[:end]
			if _, err := s.f.WriteAt(chunk, s.pos); err != nil {
				return written, err
			}
		}
		s.pos += int64(len(chunk))
		s.hwm = max(s.hwm, s.pos)
		written += len(chunk)
		p = p[len(chunk):]
	}
	return written, nil
}

// Read implements io.Reader over the logical content.
func (s *sparseFile) Read(p []byte) (int, error) {
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
func (s *sparseFile) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += s.pos
	case io.SeekEnd:
		off += s.hwm
	default:
		return s.pos, fmt.Errorf("ext4: seek: bad whence %d", whence)
	}
	if off < 0 {
		return s.pos, fmt.Errorf("ext4: seek to negative offset %d", off)
	}
	s.pos = off
	return off, nil
}

// Finish sets the file's size to the logical size and returns it.
func (s *sparseFile) Finish() (int64, error) {
	if err := s.f.Truncate(s.hwm); err != nil {
		return 0, err
	}
	return s.hwm, nil
}
