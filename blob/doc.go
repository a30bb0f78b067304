// Package blob defines Strata's content-addressed storage contract: digests,
// blob and ref records, the sentinel errors, the verifying reader, and the
// Tier interface that every storage tier and every wrapper around one
// implements.
//
// Everything Strata stores is a digest-keyed blob (manifests, indexes, configs,
// layers, derived ext4 images) plus small named records, refs, that point at
// blobs (tag -> manifest digest, derivation -> derived blob, access proofs).
// Package blob imports nothing of the project.
//
// # Errors
//
// Tiers wrap the sentinels below with the digest and the tier's name;
// callers test with errors.Is:
//
//   - ErrNotFound: the tier does not hold the blob or ref (a miss).
//   - ErrUnavailable: the tier cannot answer now (down, circuit open); a
//     stack falls through to the next tier instead of failing.
//   - ErrMismatch: content did not hash to its digest or had the wrong size;
//     the concrete *MismatchError carries what was wanted and what was got.
//   - ErrInvalidDigest, ErrInvalidRef: malformed input from the caller.
//   - ErrUnsupported: the tier cannot do this (for example listing a remote CAS).
//   - ErrTooLarge: the tier declines a blob above its per-blob limit.
package blob
