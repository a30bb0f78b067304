package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/strata-oci/strata/blob"
)

// blobReader is the unverified body of one blob download that resumes
// itself: when the connection breaks (a reset, fewer bytes than the
// Content-Length promised, or a stall: see Config.IdleTimeout) it asks the
// same endpoint for the rest with a Range request. A 206 must start exactly
// where the stream broke; a 200 (a registry that ignores Range) is accepted
// by discarding what was already read. A mirror that stalls hands the rest
// over to the next endpoint at once. It is wrapped in a blob.Verifier, so
// the content is verified end to end across resumes.
//
// It keeps the context of the Blob call: an io.Reader has no other way to
// learn it, and the download is bound to that call.
type blobReader struct {
	c      *Client
	ctx    context.Context
	cancel context.CancelFunc
	ep     endpoint
	next   []endpoint // where to resume if ep is a mirror that cannot
	repo   Repository
	d      blob.Digest
	total  int64 // where the stream ends: the blob's length (-1 if unknown), or a part's end
	size   int64 // the blob's length, -1 if unknown
	// ranged: the stream is the part [off, total) of the blob (a parallel
	// read): it ends at total (io.EOF) whatever the server sends beyond.
	// Otherwise bytes beyond total reach the verifier, which rejects them.
	ranged bool
	limit  int64 // Config.MaxBlob, 0 = none

	body    io.ReadCloser
	off     int64
	resumes int
}

func (b *blobReader) Read(p []byte) (int, error) {
	if b.ranged {
		if b.off >= b.total {
			return 0, io.EOF
		}
		if rest := b.total - b.off; int64(len(p)) > rest {
			p = p[:rest]
		}
	}
	for {
		n, err := b.body.Read(p)
		b.off += int64(n)
		if b.limit > 0 && b.off > b.limit {
			return 0, fmt.Errorf("GET blob %s %s/%s: %w: more than %d bytes", b.d, b.ep.host(), b.repo.Name(), ErrTooLarge, b.limit)
		}
		if err == nil || err == io.EOF && (b.total < 0 || b.off >= b.total) {
			return n, err
		}
		if b.total >= 0 && b.off == b.total {
			// Everything arrived; a failure after the last byte is moot.
			return n, io.EOF
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if b.ctx.Err() != nil || b.resumes >= b.c.cfg.MaxResumes {
			if errors.Is(err, ErrUnreachable) {
				// A stall says what happened itself.
				return n, fmt.Errorf("GET blob %s %s/%s: broken after %d bytes (%d resumes): %w", b.d, b.ep.host(), b.repo.Name(), b.off, b.resumes, err)
			}
			return n, fmt.Errorf("GET blob %s %s/%s: %w: broken after %d bytes (%d resumes): %w", b.d, b.ep.host(), b.repo.Name(), ErrUnreachable, b.off, b.resumes, err)
		}
		if errors.Is(err, ErrStalled) && b.ep.mirror && len(b.next) > 0 {
			// A mirror that stalls is not asked again: the rest comes
			// from the next mirror or the origin.
			b.c.fallback(b.repo, b.ep, err, false)
			b.ep, b.next = b.next[0], b.next[1:]
		}
		if rerr := b.resumeAny(); rerr != nil {
			return n, fmt.Errorf("resuming blob %s after %d bytes (broken by %v): %w", b.d, b.off, err, rerr)
		}
		if n > 0 {
			return n, nil
		}
	}
}

// resumeAny resumes at the current endpoint and, when that is a mirror
// that fails, at the following endpoints in turn (within MaxResumes).
func (b *blobReader) resumeAny() error {
	return b.atEndpoints(b.resume, func() bool { return b.resumes < b.c.cfg.MaxResumes })
}

// atEndpoints calls try at the current endpoint and, while it fails at a
// mirror and again allows, at the following endpoints in turn.
func (b *blobReader) atEndpoints(try func() error, again func() bool) error {
	err := try()
	for err != nil && b.ep.mirror && len(b.next) > 0 && b.ctx.Err() == nil && again() {
		b.c.fallback(b.repo, b.ep, err, false)
		b.ep, b.next = b.next[0], b.next[1:]
		err = try()
	}
	return err
}

func (b *blobReader) resume() error {
	b.body.Close()
	b.body = http.NoBody
	b.resumes++
	if err := b.request(); err != nil {
		return err
	}
	b.c.m.resumes.WithLabelValues(b.c.m.host(b.ep.host())).Inc()
	return nil
}

// request asks b.ep for the blob from b.off to where the stream ends and
// makes the answer b.body. A 206 must cover exactly that; a 200 (a
// registry that ignores Range) is accepted by discarding the first b.off
// bytes.
func (b *blobReader) request() error {
	host, rname := b.ep.host(), b.repo.Name()
	rng := "bytes=" + strconv.FormatInt(b.off, 10) + "-"
	if b.total >= 0 {
		// A closed range: some registries (ggcr's own) accept only that form.
		rng += strconv.FormatInt(b.total-1, 10)
	}
	resp, err := b.c.send(b.ctx, b.ep, b.repo, http.MethodGet, "blobs", string(b.d), http.Header{"Range": {rng}})
	if err != nil {
		return err
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		start, end, size, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || start != b.off || (b.total >= 0 && end != b.total-1) || (b.size >= 0 && size >= 0 && size != b.size) {
			resp.Body.Close()
			return fmt.Errorf("GET blob %s %s/%s: %w: asked for %s, got Content-Range %q", b.d, host, rname, ErrProtocol, rng, clip(resp.Header.Get("Content-Range")))
		}
	case http.StatusOK:
		if _, err := io.CopyN(io.Discard, resp.Body, b.off); err != nil {
			resp.Body.Close()
			return fmt.Errorf("GET blob %s %s/%s: %w: skipping %d bytes the registry sent again: %w", b.d, host, rname, ErrUnreachable, b.off, err)
		}
	default:
		resp.Body.Close()
		return blobStatusError("GET blob "+string(b.d)+" (range "+rng+")", host, rname, resp)
	}
	b.body = resp.Body
	return nil
}

// Close releases the connection. It is safe to call more than once.
func (b *blobReader) Close() error {
	err := b.body.Close()
	b.cancel()
	return err
}

// parseContentRange parses "bytes START-END/SIZE" (SIZE may be "*", then -1).
func parseContentRange(v string) (start, end, size int64, err error) {
	bad := errors.New("malformed Content-Range")
	rest, ok := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	if !ok {
		return 0, 0, 0, bad
	}
	rng, sz, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, 0, bad
	}
	s, e, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, 0, bad
	}
	if start, err = strconv.ParseInt(s, 10, 64); err != nil || start < 0 {
		return 0, 0, 0, bad
	}
	if end, err = strconv.ParseInt(e, 10, 64); err != nil || end < start {
		return 0, 0, 0, bad
	}
	size = -1
	if sz != "*" {
		if size, err = strconv.ParseInt(sz, 10, 64); err != nil || size <= end {
			return 0, 0, 0, bad
		}
	}
	return start, end, size, nil
}
