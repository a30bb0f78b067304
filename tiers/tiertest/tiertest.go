// Package tiertest is the conformance suite for blob.Tier: one set of tests
// that holds the whole Tier contract written in package blob's doc comments.
// Every tier and every wrapper runs it:
//
//	func TestConformance(t *testing.T) {
//		tiertest.Run(t, tiertest.Config{New: func(t *testing.T) blob.Tier { ... }})
//	}
//
// The suite checks misses, malformed input, empty, tiny and 64 MiB blobs
// (streamed, never held twice), rejection of wrong digests and sizes with
// nothing stored, idempotent and concurrent Puts (64 goroutines on one
// digest, 16 on many blobs and refs), context cancellation before calls and
// in the middle of reads and writes, Info fields, refs (round trip,
// overwrite, scoping, expiry, validation, listing), Delete, Walk, Usage,
// Close and, where the tier supports it, per-blob limits (MaxBlob),
// detection of rotten storage (Corrupt) and a close/reopen cycle (Reopen).
// Subtests are named after the rule they hold, so a failure names it.
//
// Errors are checked with errors.Is: a miss must wrap blob.ErrNotFound (and
// name the digest), bad input blob.ErrInvalidDigest or blob.ErrInvalidRef, a
// rejected Put a *blob.MismatchError, and a call stopped by its context must
// wrap context.Canceled (translate transport errors such as gRPC's Canceled
// status back into it).
//
// The package also exports helpers for other tests: RandomBlob and
// RandomBytes make deterministic content, PutBytes, PutRandom, ReadAll and
// StreamDigest store and read blobs and fail the test on error, and Faulty
// wraps a tier to inject read faults (breaks, flipped bytes, truncation,
// lost entries) for tests of what sits above a tier.
package tiertest

import (
	"testing"

	"github.com/strata-oci/strata/blob"
)

// Config describes the tier under test.
type Config struct {
	// New returns a fresh, empty tier; it registers its own cleanup with
	// t.Cleanup. Every subtest calls New for its own tier. The suite closes
	// tiers itself in the "Close" and "Reopen" subtests, so the cleanup must
	// tolerate a tier that is already closed (a second Close must not panic;
	// ignore its error).
	New func(t *testing.T) blob.Tier

	// CannotList: Walk and WalkRefs return blob.ErrUnsupported; the suite
	// asserts that instead of checking listings.
	CannotList bool

	// CannotDelete: Delete and DeleteRef return blob.ErrUnsupported; the
	// suite asserts that instead of checking deletion.
	CannotDelete bool

	// CannotDeleteBlobs: only Delete returns blob.ErrUnsupported; DeleteRef
	// works and is checked (a REAPI CAS cannot delete, its refs can be
	// tombstoned). CannotDelete implies it.
	CannotDeleteBlobs bool

	// DeleteRacesReads: a read of a blob under way when the blob is
	// deleted may bring it back afterwards (a tiers.Stack's fill writes
	// the blob it found below into the tiers above, verified, after the
	// Delete returned). The concurrent subtest then accepts a deleted
	// blob that is back with exactly its content, and checks that a
	// Delete with no read under way leaves a miss.
	DeleteRacesReads bool

	// MaxBlob, when > 0, is the largest blob the tier accepts: Put of a
	// bigger one must return blob.ErrTooLarge, store nothing and not read the
	// whole stream. Cases that need a bigger blob (the 64 MiB one) are
	// skipped and others shrink to fit. 0 means no limit.
	MaxBlob int64

	// Reopen, when set, closes old and returns a tier over the same storage
	// (for tiers that persist, such as disk). The "Reopen" subtest checks
	// that blobs and refs survive and deletions stay deleted. Reopen
	// registers cleanup for the tier it returns.
	Reopen func(t *testing.T, old blob.Tier) blob.Tier

	// Corrupt, when set, damages the stored bytes of d in place behind the
	// tier's back (for tiers whose storage can rot: flip a byte in the file,
	// truncate it). The "CorruptionDetected" subtest then checks that
	// reading it fails with blob.ErrMismatch (or Open misses) rather than
	// ever returning wrong bytes with io.EOF, that the tier drops the entry
	// (later Stat and Open miss), and that a fresh Put restores it.
	Corrupt func(t *testing.T, tier blob.Tier, d blob.Digest)
}

// Sizes the suite uses. They are fixed so that results are comparable
// between tiers and independent of -short.
const (
	LargeBlobSize      = 64 << 20 // the big streamed blob
	CancelBlobSize     = 8 << 20  // blob read or written when ctx is cancelled
	ConcurrentBlobSize = 1 << 20  // blob put and read by 64 goroutines
	Goroutines         = 64
	// ReadsAfterCancel bounds how many further Reads (of at most
	// CancelReadSize bytes each) an Open reader may serve after its ctx was
	// cancelled before it must fail.
	ReadsAfterCancel = 64
	CancelReadSize   = 32 << 10
)

// Run runs the conformance suite against cfg.New as subtests of t.
func Run(t *testing.T, cfg Config) {
	t.Helper()
	if cfg.New == nil {
		t.Fatal("tiertest.Config.New is nil")
	}
	s := &suite{cfg: cfg}
	tests := []struct {
		name string
		fn   func(t *testing.T)
	}{
		// CAS
		{"NotFound", s.testNotFound},
		{"InvalidDigest", s.testInvalidDigest},
		{"EmptyBlob", s.testEmptyBlob},
		{"OneByteBlob", s.testOneByte},
		{"ReaderShapes", s.testReaderShapes},
		{"Large64MiBStreamed", s.testLarge},
		{"TooLarge", s.testTooLarge},
		{"PutMismatchStoresNothing", s.testPutMismatch},
		{"PutNegativeSize", s.testPutNegativeSize},
		{"IdempotentPut", s.testIdempotentPut},
		{"Concurrent64PutAndRead", s.testConcurrent},
		{"ConcurrentMixed", s.testConcurrentMixed},
		{"CancelledContext", s.testCancelledContext},
		{"OpenCancelMidStream", s.testOpenCancelMidStream},
		{"PutCancelMidStream", s.testPutCancelMidStream},
		{"ReaderClose", s.testReaderClose},
		{"Info", s.testInfo},
		{"DeleteThenMiss", s.testDelete},
		{"Walk", s.testWalk},
		{"CorruptionDetected", s.testCorruption},
		// Refs
		{"RefRoundTrip", s.testRefRoundTrip},
		{"RefOverwrite", s.testRefOverwrite},
		{"RefScoping", s.testRefScoping},
		{"RefExpiredInPast", s.testRefExpiredInPast},
		{"RefExpiresSoon", s.testRefExpiresSoon},
		{"RefInvalid", s.testRefInvalid},
		{"DeleteRef", s.testDeleteRef},
		{"WalkRefs", s.testWalkRefs},
		// Tier
		{"Usage", s.testUsage},
		{"Close", s.testClose},
		{"Reopen", s.testReopen},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.fn)
	}
}

type suite struct {
	cfg Config
}

// noBlobDelete reports whether Delete is expected to be unsupported.
func (s *suite) noBlobDelete() bool { return s.cfg.CannotDelete || s.cfg.CannotDeleteBlobs }

// fits reports whether a blob of size bytes is within the tier's limit.
func (s *suite) fits(size int64) bool {
	return s.cfg.MaxBlob <= 0 || size <= s.cfg.MaxBlob
}

// clamp returns size, or the tier's limit when that is smaller.
func (s *suite) clamp(size int64) int64 {
	if s.fits(size) {
		return size
	}
	return s.cfg.MaxBlob
}
