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
// under its own digest. Open streams ByteStream Read and verifies digest
// and size after decompression; Put sends small blobs with
// BatchUpdateBlobs and large ones with ByteStream Write, committing only
// after the source verified. Stat asks FindMissingBlobs, with a
// short-lived cache of positive answers.
//
// Large blobs read as identity (Parallel.Threshold, default 8 MiB) are
// read as ranged parts (read_offset, read_limit) over several streams
// (Parallel.Streams, default 4, of Parallel.PartSize, default 8 MiB), the
// parts ahead of the caller buffered within a tier-wide budget
// (Parallel.Memory, default 64 MiB), and delivered in order through the
// blob's one verifier: a part that breaks is resumed, a read-ahead part
// that stalls is read again when the caller reaches it, and corruption in
// any part still fails at EOF of the whole blob.
//
// # Compression
//
// zstd compressed-blobs are used where the server offers them, per blob:
// the tier does not know media types, so it decides from the content's
// first bytes. Content starting with the magic of gzip, zstd (or a zstd
// skippable frame), xz, bzip2 or lz4 (OCI layers, mostly) moves as
// identity; anything else (ext4 images, configs, uncompressed layers) as
// zstd. Put looks at the bytes it uploads; Open uses what this tier learnt
// of the blob (on Put or an earlier read, in a bounded memo), and for a
// blob it knows nothing of starts an identity read and, when the first
// message does not look compressed and enough is left, reads the rest from
// compressed-blobs/zstd at that offset. The choice only picks the wire
// encoding: the bytes are verified either way. REAPI forbids read_limit on
// compressed-blobs, so zstd reads are one stream, not parts.
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
