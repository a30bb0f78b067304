// Package ctxio stops a stream when a context is done: the one
// context-aware reader of the project, used where a copy loop reads from a
// source that does not take a context (a Put's body, a local file).
package ctxio

import (
	"context"
	"io"
)

// Reader reads from the reader it wraps until a context is done; from then
// on every Read fails with the context's error before reading anything, so
// a copy stops between two Reads. It does not interrupt a Read in progress.
//
// D is the digest type of the readers that verify themselves
// (blob.Digest): a Reader passes such a reader's bytes through unchanged
// and ends only where it does or with the context's error, so it forwards
// its VerifiedBlob method (blob.VerifiedReader) and the verified end
// survives the wrapping. Over any other reader VerifiedBlob reports "", -1,
// as blob.VerifiedBlobOf does. This package imports nothing of the project;
// the type parameter is how it names blob's digest without importing blob.
type Reader[D ~string] struct {
	err func() error // the context's Err
	r   io.Reader
}

// NewReader returns a Reader over r that stops once ctx is done. It keeps
// ctx's Err method only, and lives no longer than the call that made it.
func NewReader[D ~string](ctx context.Context, r io.Reader) *Reader[D] {
	return &Reader[D]{err: ctx.Err, r: r}
}

// Read implements io.Reader.
func (c *Reader[D]) Read(p []byte) (int, error) {
	if err := c.err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// VerifiedBlob implements blob.VerifiedReader when the wrapped reader does
// (see Reader), and returns "", -1 otherwise.
func (c *Reader[D]) VerifiedBlob() (D, int64) {
	if v, ok := c.r.(interface{ VerifiedBlob() (D, int64) }); ok {
		return v.VerifiedBlob()
	}
	return "", -1
}
