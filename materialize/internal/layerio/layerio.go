// Package layerio opens a layer's decompressed tar stream by media type,
// with limits against decompression bombs. Both materializers use it.
package layerio

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
)

// Sentinel errors.
var (
	// ErrLimitExceeded: the decompressed stream is longer than the
	// configured limit (a decompression bomb, or a limit set too low), or a
	// layer's entries exceed EntryLimits. It wraps blob.ErrTooLarge.
	ErrLimitExceeded error = limitError{}
)

// limitError is ErrLimitExceeded: its own message, and errors.Is sees
// blob.ErrTooLarge through it.
type limitError struct{}

func (limitError) Error() string { return "decompressed layer exceeds size limit" }
func (limitError) Unwrap() error { return blob.ErrTooLarge }

// Limits bound what one layer may decompress to.
type Limits struct {
	// MaxBytes is the most decompressed bytes a layer may yield; reading
	// past it fails with ErrLimitExceeded. 0 means DefaultMaxBytes; a
	// negative value means no limit.
	MaxBytes int64
	// ZstdMaxWindow bounds the zstd window (memory a zstd frame may ask
	// for). 0 means DefaultZstdMaxWindow.
	ZstdMaxWindow uint64
}

// Defaults for Limits.
const (
	DefaultMaxBytes      int64  = 64 << 30
	DefaultZstdMaxWindow uint64 = 128 << 20
)

// Open opens layer l and returns its decompressed tar stream.
//
// The returned reader yields io.EOF only after the whole blob has been read
// from l (so a verifying reader under it has checked the digest): when the
// decompressor ends, the rest of the blob is read and must be empty. Errors
// name the layer digest. A compression header that does not decode fails
// Open only after the rest of the blob was read, as Settle does: with an
// error wrapping the *blob.MismatchError when the bytes were not the blob's.
// The caller closes the reader, which closes the blob reader. Cancelling
// ctx fails later reads if l honours it.
func Open(ctx context.Context, l manifest.Layer, lim Limits) (io.ReadCloser, error) {
	c, err := manifest.Compression(l.MediaType())
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", l.Digest(), err)
	}
	rc, err := l.Open(ctx)
	if err != nil {
		return nil, fmt.Errorf("layer %s: open: %w", l.Digest(), err)
	}
	d, err := Decompress(rc, c, lim)
	if err != nil {
		defer rc.Close()
		if ctx.Err() == nil && MaySettle(err) {
			// A bad compression header may be a rotten cached copy's
			// first bytes: read the rest of the blob to tell (see Settle).
			_, rerr := io.Copy(io.Discard, rc)
			return nil, verdict(string(l.Digest()), fmt.Errorf("layer %s: %w", l.Digest(), err), rerr)
		}
		return nil, fmt.Errorf("layer %s: %w", l.Digest(), err)
	}
	n := &named{ReadCloser: d, name: string(l.Digest())}
	if st, ok := d.(*stream); ok {
		n.raw = st.src
	}
	return n, nil
}

type named struct {
	io.ReadCloser
	name  string
	raw   io.Reader // the layer blob under the decompressor
	close sync.Once
	cerr  error
}

func (n *named) Read(p []byte) (int, error) {
	k, err := n.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("layer %s: %w", n.name, err)
	}
	return k, err
}

func (n *named) Close() error {
	n.close.Do(func() { n.cerr = n.ReadCloser.Close() })
	return n.cerr
}

// settle reads the rest of the layer blob, undecompressed, so that the
// verifying reader under it checks the digest, and closes n.
func (n *named) settle(cause error) error {
	defer n.Close()
	if n.raw == nil {
		return cause
	}
	_, err := io.Copy(io.Discard, n.raw) // a sticky reader: ends as the blob ended
	return verdict(n.name, cause, err)
}

// verdict is Settle's answer once the blob was read to its end with err.
func verdict(name string, cause, err error) error {
	switch {
	case err == nil:
		return cause // the bytes were the blob's: the cause stands
	case errors.Is(err, blob.ErrMismatch):
		return fmt.Errorf("layer %s: %w (which explains: %v)", name, err, cause)
	default:
		// Unknown whether the bytes were right: not a property of the
		// layer, so not to be remembered as one.
		return fmt.Errorf("layer %s: %v; and the blob could not be verified: %w", name, cause, err)
	}
}

// MaySettle reports whether a consumer that stopped on err should Settle:
// err may come from the bytes (a refused entry, a decompression error, a
// per-layer limit) rather than from the context, the blob's own
// verification, its source, or the space to write to.
func MaySettle(err error) bool {
	return err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) &&
		!errors.Is(err, blob.ErrMismatch) && !errors.Is(err, blob.ErrUnavailable) &&
		!errors.Is(err, ErrBudgetExceeded) && !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, syscall.EDQUOT)
}

// Settle is called by a consumer that stopped reading r, a stream from
// Open (possibly behind Readahead), because of cause: a tar entry it
// refused, a decompression error, a limit. Those may come from wrong bytes
// (a corrupt cached copy) that the verifying reader under the stream would
// only report at the blob's end. Settle reads the rest of the blob (not
// decompressing it) and returns an error wrapping the *blob.MismatchError
// when the blob did not verify, cause when it did (the layer really is
// so), or an error that is neither when the blob could not be read to its
// end. It closes r. Reading the rest costs at most the blob's size.
func Settle(r io.ReadCloser, cause error) error {
	switch r := r.(type) {
	case *named:
		return r.settle(cause)
	case *readahead:
		return r.settle(cause)
	}
	r.Close()
	return cause
}

// Decompress wraps r, a layer blob compressed with c, and returns the
// decompressed stream, bounded by lim. The returned reader's io.EOF means
// both the decompressed stream and r ended cleanly (trailing bytes after the
// compressed stream are an error). Closing it closes r if r is an
// io.Closer. It is not safe for concurrent use.
func Decompress(r io.Reader, c manifest.Codec, lim Limits) (io.ReadCloser, error) {
	max := lim.MaxBytes
	if max == 0 {
		max = DefaultMaxBytes
	}
	win := lim.ZstdMaxWindow
	if win == 0 {
		win = DefaultZstdMaxWindow
	}
	var closer io.Closer
	if cl, ok := r.(io.Closer); ok {
		closer = cl
	}
	// The blob reader's errors are kept: a decompressor that buffers may
	// read a verifier's mismatch at the blob's end and report only its
	// own complaint (a bad checksum); Settle looks at what the blob said.
	r = &stickyReader{r: r}
	s := &stream{src: r, srcClose: closer, max: max}
	switch c {
	case manifest.None:
		s.dec = r
	case manifest.Gzip:
		// gzip reads through a bufio.Reader; its default 4 KiB buffer costs
		// a Read of the blob stream (a tee, a verifier) per 4 KiB.
		zr, err := gzip.NewReader(bufio.NewReaderSize(r, 64<<10))
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		s.dec = zr
		s.decClose = zr.Close
	case manifest.Zstd:
		zr, err := zstd.NewReader(r,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(win),
			zstd.WithDecoderMaxMemory(win*2),
			zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		s.dec = zr
		s.decClose = func() error { zr.Close(); return nil }
	default:
		return nil, fmt.Errorf("%w: compression %v", manifest.ErrUnknownMediaType, c)
	}
	s.compression = c
	return s, nil
}

// stickyReader returns, once r has failed or ended, that error forever.
type stickyReader struct {
	r   io.Reader
	err error
}

func (s *stickyReader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.r.Read(p)
	if err != nil {
		s.err = err
	}
	return n, err
}

type stream struct {
	src         io.Reader
	srcClose    io.Closer
	dec         io.Reader
	decClose    func() error
	compression manifest.Codec
	max         int64
	n           int64
	err         error
}

func (s *stream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.max >= 0 {
		// Allow one byte beyond the limit so an overlong stream is seen.
		// s.n <= s.max holds here (passing it is a sticky error), so rem >=
		// 0; max+1 is never computed, as max may be MaxInt64.
		if rem := s.max - s.n; int64(len(p)) > rem {
			p = p[:rem+1] // rem < len(p): no overflow
		}
	}
	n, err := s.dec.Read(p)
	s.n += int64(n)
	if s.max >= 0 && s.n > s.max {
		s.err = fmt.Errorf("%w: more than %d bytes", ErrLimitExceeded, s.max)
		return 0, s.err
	}
	switch {
	case err == io.EOF:
		if s.compression != manifest.None {
			// Read the rest of the blob, so a verifier under us sees EOF and
			// checks the digest; anything left over is not part of the layer.
			var buf [512]byte
			k, rerr := io.ReadFull(s.src, buf[:])
			switch {
			case rerr == io.EOF:
			case k > 0:
				s.err = fmt.Errorf("%s: trailing data after the compressed stream", s.compression)
				return n, s.err
			case rerr != io.ErrUnexpectedEOF:
				s.err = rerr
				return n, rerr
			}
		}
		s.err = io.EOF
	case err != nil:
		if s.compression != manifest.None {
			err = fmt.Errorf("%s: %w", s.compression, err)
		}
		s.err = err
	}
	return n, err
}

func (s *stream) Close() error {
	var err error
	if s.decClose != nil {
		err = s.decClose()
	}
	if s.srcClose != nil {
		if cerr := s.srcClose.Close(); err == nil {
			err = cerr
		}
	}
	return err
}
