// Package reapi is a blob.Tier over any Remote Execution API v2 server
// (BuildBuddy, Buildbarn, bazel-remote, NativeLink): the shared tier through
// which a fleet of executors shares one cache. The REAPI cluster is the
// distributed store; this package is only a client of its CAS and
// ActionCache. docs/reapi.md documents the wire layout exactly, so that any
// REAPI client can read what Strata wrote.
//
// # CAS
//
// An OCI sha256 digest is a REAPI digest (hash plus size): a blob is stored
// under its own digest. Open streams ByteStream Read (zstd compressed-blobs
// when the server offers it) and verifies digest and size after
// decompression; Put sends small blobs with BatchUpdateBlobs and large ones
// with ByteStream Write, committing only after the source verified. Stat
// asks FindMissingBlobs, with a short-lived cache of positive answers.
//
// REAPI names a blob by hash and size, but blob.CAS passes only the digest.
// The tier learns sizes from Put, Open and refs, and every Put also writes a
// size index entry into the ActionCache (key derived from the digest, value
// an ActionResult whose output references the blob), so any executor can
// find a blob Strata stored from its digest alone. A blob with no index
// entry that this process has not seen (one written by another REAPI
// client) is reported as blob.ErrNotFound: the tier cannot name it.
//
// REAPI has no delete: Delete returns blob.ErrUnsupported and the server
// evicts by its own policy. Walk and Usage return blob.ErrUnsupported.
//
// # Refs
//
// A ref is an ActionCache entry under the digest of a canonical Action whose
// Command carries ("strata-ref/v1", namespace, scope, name). Its
// ActionResult has the output file "blob" (the ref's blob) and
// "strata-ref.json" (media type, expiry). Everything an entry references is
// in the CAS before the entry is written, as strict servers require; PutRef
// of a blob the CAS lacks fails with blob.ErrNotFound and writes nothing.
// Expired refs read as blob.ErrNotFound; DeleteRef writes a tombstone.
// WalkRefs returns blob.ErrUnsupported.
//
// # Failures
//
// A miss is blob.ErrNotFound; every other server or transport failure
// (UNAVAILABLE, timeouts, refused credentials, broken streams) is
// blob.ErrUnavailable, so a stack falls through to the next tier. Content
// that fails verification is a *blob.MismatchError; Repair uploads a good
// copy over a bad one where the server allows it. Calls are retried with
// backoff on UNAVAILABLE and RESOURCE_EXHAUSTED; a read whose stream breaks
// mid-way resumes at the offset delivered (read_offset); a stream that
// makes no progress for StallTimeout fails at once. A circuit breaker makes
// calls to a server that keeps failing fail at once until a probe call
// succeeds. Only this package speaks gRPC codes.
package reapi
