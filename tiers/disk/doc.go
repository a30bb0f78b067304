// Package disk is Strata's local disk tier: a content-addressed blob store on
// one filesystem, with a Badger (v4) index, a byte budget with LRU eviction,
// and crash safety that comes from the files themselves.
//
// # Layout
//
// Under the root directory:
//
//	LOCK                        held with flock(LOCK_EX) while a Tier is open
//	blobs/sha256/ab/<hex>       one file per blob, named by its digest
//	tmp/                        temp files of Puts in progress (same filesystem)
//	index/                      Badger: blob rows (size, last access) and refs
//
// # Guarantees
//
// A blob becomes visible all-or-nothing: Put writes a temp file while hashing
// it, fsyncs it, checks digest and size, renames it into place and fsyncs the
// directory, and only then records the index row. A crash at any point leaves
// at most a temp file or a file without a row; Open reconciles the index with
// the files (see ReconcileStats). Reads hash as they stream and fail at EOF
// with a *blob.MismatchError if a file rotted, after which the entry is
// dropped, so the caller can treat the error as a miss and refetch.
//
// Only one Tier may hold a root at a time, in this process or any other:
// a second Open fails with an error wrapping ErrLocked.
package disk
