// Package fetcher is the one entry point an executor needs to get an image:
// FetchImage resolves a reference, authorizes the caller, and returns an
// Image whose manifest and config have been read (through the tier stack,
// else from the registry) and whose layers open lazily, streaming from the
// highest tier that holds them or from the registry while being written into
// the tiers.
//
// # Authorization
//
// A cache must never become a way around a registry's access control. A
// caller gets cached content of a repository only if its credentials proved
// access to that repository at the origin registry within Config.ProofTTL.
// A proof is a ref (namespace blob.NamespaceProof, scope = the credential's
// identity, name = registry/repository) written after a successful manifest
// HEAD at the origin with the caller's credentials. A proof made anonymously
// (scope credential.AnonymousIdentity) shows the repository is public and
// admits every caller. A denial (401/403) deletes the caller's proof at
// once (and the public proof, when the anonymous caller was denied). While
// the registry is unreachable, unexpired proofs keep serving.
//
// Proving access to a repository is not enough for content: a caller with
// access to repository A must not read a manifest, config or layer of
// repository B (of this registry or of any other) by asking for A@digest,
// or by fetching a manifest, from a registry it controls, that lists B's
// digests. Every blob and document is therefore served from the cache only
// when the caller's repository is a proven member for it: a ref
// (blob.MemberKey: namespace blob.NamespaceMember, name
// registry/repository@digest) written only when that
// registry served the bytes of that digest for that repository, verified. A
// HEAD is never taken as proof (a registry can claim any digest). Content
// without membership is read from the caller's registry with
// tiers.Stack.Fill: never from a cached copy, streamed while written into
// the tiers, and collapsed only with other callers of the same repository
// and digest, in a flight of the fetcher's that re-checks the membership
// inside; the download's verified end records the membership for next
// time, before the flight's waiters look again. The cost is one download
// per repository for a layer that several repositories share. A member
// reads through the tiers (tiers.Stack.OpenOrFill), with its registry as
// the last source.
//
// Refs that decide access (tags, proofs, membership) carry an HMAC
// signature under Config.SigningKey over everything they say, and a ref whose
// signature does not verify is never trusted: a shared tier (a remote action
// cache) may be writable by build clients, who must not be able to forge
// them. Executors that share one key (derived from a fleet-wide identity
// key) share proofs and membership through the shared tier; a host with its
// own key trusts only what it wrote.
//
// Anonymous callers use the stack's Local view (no shared tier) unless
// Config.AnonymousShared is set.
//
// # Deduplication
//
// Concurrent FetchImage calls for the same (reference, platform, credential
// identity) collapse into one, which runs on its own context: a caller that
// gives up leaves alone, and the work is cancelled only when every caller
// has left. Concurrent reads of one blob by callers of one repository
// collapse across images and credentials (in the fetcher's membership
// flight, and in the stack, keyed by repository): each caller is
// authorized before it can open a layer. A collapsed fetch that fails
// without a definite answer (not a denial, not a miss) is retried by its
// waiters instead of failing them all.
//
// # Refs
//
//	tag     ""        registry/repo:tag       -> manifest or index (expires after TagTTL)
//	member  ""        registry/repo@digest    -> that manifest or index
//	proof   identity  registry/repo           -> the manifest that proved access (expires after ProofTTL)
package fetcher
