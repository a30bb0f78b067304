package reapi

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/strata-oci/strata/blob"
)

// resumingReader is the (decompressed) content of one blob read over
// ByteStream, or of one part of it [off, end). When the stream breaks after
// it delivered some bytes, it reads on from a new stream opened with
// read_offset at the bytes delivered so far (and, for compressed-blobs, a
// fresh decoder: REAPI read_offset counts uncompressed bytes), at most
// Retries.MaxResumes times. Every byte still goes through the blob's one
// Verifier above, so a server that answers a resumed read with other bytes
// is caught at EOF. Not safe for concurrent Reads.
type resumingReader struct {
	t         *Tier
	ctx       context.Context
	d         blob.Digest
	size      int64
	zstd      bool
	onCorrupt func(error)
	// ranged: the reader is the part [off, end) of the blob: its streams
	// carry read_limit, and it ends at end (io.EOF) whatever the server
	// sends beyond. Otherwise it reads to the stream's end (end = size),
	// so that bytes beyond the blob reach the verifier.
	ranged bool
	end    int64
	// toZstd: once the message received is delivered, go on with a
	// compressed-blobs/zstd stream (see Tier.Open).
	toZstd bool

	sr      *streamReader
	dec     *zstdReader // nil unless zstd
	off     int64       // blob offset delivered up to
	resumes int
	err     error
}

// open starts the stream at r.off.
func (r *resumingReader) open() error {
	var limit int64
	if r.ranged {
		limit = r.end - r.off
	}
	resource := readResource(r.t.cfg.Instance, toREAPI(r.d, r.size), r.zstd)
	sr, err := r.t.openRead(r.ctx, resource, string(r.d), r.off, limit)
	if err != nil {
		return err
	}
	r.sr = sr
	if r.zstd {
		r.dec, err = newZstdReader(sr, r.t.cfg.Name, r.d, r.size, r.off, r.onCorrupt)
		if err != nil {
			sr.Close()
			return err
		}
	}
	return nil
}

// head returns a copy of the data of the message received and not yet
// delivered.
func (r *resumingReader) head() []byte {
	if r.dec != nil || r.sr == nil {
		return nil
	}
	return r.sr.chunk.peek()
}

func (r *resumingReader) Read(p []byte) (int, error) {
	for {
		if r.err != nil {
			return 0, r.err
		}
		if r.ranged {
			if r.off >= r.end {
				return 0, io.EOF
			}
			if rem := r.end - r.off; int64(len(p)) > rem {
				p = p[:rem]
			}
		}
		if r.toZstd && r.sr.chunk.n == 0 {
			if err := r.switchToZstd(); err != nil {
				r.err = err
				return 0, err
			}
		}
		var n int
		var err error
		if r.dec != nil {
			n, err = r.dec.Read(p)
		} else {
			n, err = r.sr.Read(p)
		}
		r.off += int64(n)
		switch {
		case err == nil, err == io.EOF:
			return n, err
		case !r.resumable(err):
			r.err = err
			return n, err
		case n > 0:
			return n, nil // the next Read resumes
		case r.off == r.end:
			// Every byte arrived, only the stream's end did not: the
			// verifier above judges them.
			r.err = io.EOF
			return 0, io.EOF
		}
		if rerr := r.resume(err); rerr != nil {
			r.err = rerr
			return 0, rerr
		}
	}
}

// resumable reports whether err is a break of the current stream that a
// new stream at the same offset may get past: not the caller's
// cancellation, not a stall (a silent server is failed over at once), not
// corrupt content, not an answer that will not change.
func (r *resumingReader) resumable(err error) bool {
	if err != r.sr.err || r.ctx.Err() != nil || errors.Is(r.sr.cause, errStalled) || r.sr.cause == nil {
		return false
	}
	switch status.Code(r.sr.cause) {
	case codes.NotFound, codes.InvalidArgument, codes.OutOfRange, codes.FailedPrecondition,
		codes.PermissionDenied, codes.Unauthenticated, codes.Unimplemented, codes.DataLoss:
		return false
	}
	return true
}

// resume replaces the broken stream (which failed with err) by one from
// r.off, or returns why it cannot.
func (r *resumingReader) resume(err error) error {
	if r.resumes >= r.t.cfg.Retries.MaxResumes {
		if r.resumes == 0 {
			return err
		}
		return fmt.Errorf("%w (gave up after %d resumed reads)", err, r.resumes)
	}
	r.resumes++
	r.t.resumes.Add(1)
	r.close()
	if oerr := r.open(); oerr != nil {
		if errors.Is(oerr, blob.ErrNotFound) {
			// Evicted mid-read: the read fails like a broken stream.
			r.t.forget(r.d)
			return fmt.Errorf("reapi %q: read %s: %w: the blob vanished while resuming at byte %d (%v)",
				r.t.cfg.Name, r.d, blob.ErrUnavailable, r.off, oerr)
		}
		return fmt.Errorf("%w (resuming at byte %d, after: %v)", oerr, r.off, err)
	}
	return nil
}

// switchToZstd replaces the identity stream, whose received message is
// delivered, by a compressed-blobs/zstd stream of the rest of the blob.
// The new stream starts at the blob's first byte and the delivered head
// is decompressed again and dropped: a server that stores blobs
// compressed (bazel-remote's default) serves a whole blob as stored,
// while a read from an offset makes it compress the rest anew (the SDK
// fake took seconds per read of a 578 MB image that way). The head is
// one message; the verifier above still judges every delivered byte.
func (r *resumingReader) switchToZstd() error {
	r.toZstd = false
	r.close()
	r.zstd, r.ranged, r.end = true, false, r.size
	delivered := r.off
	r.off = 0
	err := r.open()
	if err == nil {
		var n int64
		n, err = io.CopyN(io.Discard, r.dec, delivered)
		if err != nil {
			r.close()
			if err == io.EOF {
				err = fmt.Errorf("%w: the compressed stream ended at byte %d, before the %d bytes already read", blob.ErrMismatch, n, delivered)
				r.onCorrupt(err)
			}
		}
	}
	r.off = delivered
	if err != nil {
		if errors.Is(err, blob.ErrNotFound) {
			r.t.forget(r.d)
			return fmt.Errorf("reapi %q: read %s: %w: the blob vanished at byte %d (%v)",
				r.t.cfg.Name, r.d, blob.ErrUnavailable, r.off, err)
		}
		return err
	}
	return nil
}

func (r *resumingReader) close() {
	if r.dec != nil {
		r.dec.close()
		r.dec = nil
	}
	if r.sr != nil {
		r.sr.Close()
	}
}
