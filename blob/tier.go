package blob

import (
	"context"
	"io"
	"time"
)

// Info describes a stored blob.
type Info struct {
	Digest Digest
	Size   int64
	// LastAccess is when the tier last stored or served the blob; zero when
	// the tier does not track it.
	LastAccess time.Time
	// Tier names the tier that holds or served the blob (the innermost
	// tier's name, so a stack reports where a hit came from).
	Tier string
}

// CAS is the content-addressed half of a tier: digest -> bytes.
//
// Implementations are safe for concurrent use and honour context
// cancellation. Every method that takes a digest rejects a malformed one with
// ErrInvalidDigest.
type CAS interface {
	// Stat returns the blob's Info, or an error wrapping ErrNotFound.
	Stat(ctx context.Context, d Digest) (Info, error)

	// Open returns a streaming reader over the blob and its Info. The caller
	// must Close the reader. A tier whose storage can rot (disk, remote)
	// returns a reader that verifies as it is read and fails at EOF with a
	// *MismatchError on corruption, after which the tier drops the entry.
	// A miss wraps ErrNotFound. Cancelling ctx fails later Reads.
	Open(ctx context.Context, d Digest) (io.ReadCloser, Info, error)

	// Put stores exactly size bytes read from r under d. It hashes while
	// writing and commits only if the bytes match d and size; otherwise it
	// returns a *MismatchError and stores nothing. Put is idempotent: putting
	// a blob the tier already holds succeeds (and may not read r at all).
	// The blob becomes visible all-or-nothing. A tier that declines blobs of
	// this size returns ErrTooLarge.
	Put(ctx context.Context, d Digest, size int64, r io.Reader) error

	// Delete removes the blob. It returns an error wrapping ErrNotFound if the
	// tier did not hold it, and ErrUnsupported where the tier cannot delete.
	Delete(ctx context.Context, d Digest) error

	// Walk calls fn for every blob the tier holds, in no particular order,
	// until fn returns an error (which Walk returns). Tiers that cannot list
	// return ErrUnsupported.
	Walk(ctx context.Context, fn func(Info) error) error
}

// RefStore is the small-record half of a tier (the ActionCache face):
// named, scoped, expiring records that point at a blob.
//
// Keys of one scope never see another scope's records: a ref is found only by
// its exact (Namespace, Scope, Name).
type RefStore interface {
	// GetRef returns the ref, or an error wrapping ErrNotFound when it is
	// absent or expired.
	GetRef(ctx context.Context, k RefKey) (Ref, error)

	// PutRef creates or replaces the ref. Tiers may require the blob the ref
	// points at to be present first (remote action caches do).
	PutRef(ctx context.Context, k RefKey, r Ref) error

	// DeleteRef removes the ref; ErrNotFound if absent.
	DeleteRef(ctx context.Context, k RefKey) error

	// WalkRefs calls fn for every unexpired ref whose namespace equals
	// namespace (all namespaces when it is empty). ErrUnsupported where the
	// tier cannot list.
	WalkRefs(ctx context.Context, namespace string, fn func(RefKey, Ref) error) error
}

// Usage is a tier's occupancy.
type Usage struct {
	Blobs  int64 // number of blobs
	Bytes  int64 // bytes of blob content (logical size)
	Refs   int64 // number of refs
	Budget int64 // byte budget; 0 when unbounded or unknown
}

// Tier is one storage tier: a CAS plus a RefStore. Every tier and every
// wrapper around one implements it and passes the conformance suite in
// tiers/tiertest.
type Tier interface {
	CAS
	RefStore

	// Name identifies the tier in errors, metrics and Info.Tier.
	Name() string

	// Usage reports occupancy; ErrUnsupported where it is not known.
	Usage(ctx context.Context) (Usage, error)

	// Close releases the tier's resources. Calls after Close fail.
	Close() error
}
