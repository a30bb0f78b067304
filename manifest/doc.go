// Package manifest parses and validates what OCI registries serve: OCI image
// manifests and indexes, Docker v2 schema 2 manifests and manifest lists, and
// image configs; and it matches platforms.
//
// Parsing is strict where the specifications forbid something and tolerant of
// everything they allow:
//
//   - schemaVersion must be 2; Docker schema 1 is rejected with ErrSchema1.
//   - A media type declared by the transport (Content-Type) and the one
//     embedded in the document must agree (ErrMediaTypeMismatch). A document
//     without an embedded mediaType is accepted and classified by its
//     structure; a document that is both a manifest and an index (it has
//     "manifests" and "config" or "layers") is rejected.
//   - Every descriptor needs a well-formed media type, a sha256 digest and a
//     size from 0 to MaxDescriptorSize (1 TiB); embedded data must match
//     both.
//   - An image manifest's layers must have a known layer media type
//     (ErrUnknownMediaType names it). Artifacts (an artifactType, or a config
//     media type other than an image config) may carry any layer media type.
//   - Duplicate JSON keys, keys that differ from a spec field only in case,
//     and invalid UTF-8 are rejected: they let two parsers read two different
//     documents behind one digest.
//   - Annotations, subject, urls, data and unknown fields are accepted.
//
// Parsed documents keep their exact bytes and the digest of those bytes.
// All errors wrap one of the sentinels below and name the document's digest
// and the offending field. Parsed values are immutable by convention and safe
// for concurrent reads; callers must not modify the slices and maps they hold.
//
// The package does no I/O and knows nothing of registries or tiers.
package manifest
