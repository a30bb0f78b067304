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
// Proving access to a repository is not enough for a digest: a caller with
// access to repository A must not read a manifest of repository B by asking
// for A@digest. The fetcher therefore also records membership: a ref
// (namespace "member", name = registry/repository@digest) written only when
// the registry served that manifest digest in that repository (or when an
// index the registry served in that repository lists it). A digest
// reference is served from the cache only with both a valid proof and
// membership; otherwise the registry is asked. Layers and configs are
// served to callers authorized for a manifest that lists them: a registry
// accepts a manifest only if its blobs are in the same repository.
//
// Anonymous callers use the stack's Local view (no shared tier) unless
// Config.AnonymousShared is set.
//
// # Deduplication
//
// Concurrent FetchImage calls for the same (reference, platform, credential
// identity) collapse into one, which runs on its own context: a caller that
// gives up leaves alone, and the work is cancelled only when every caller
// has left. Concurrent reads of one blob collapse across images and
// credentials in the stack (tiers.Stack.WithSource): each caller is
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
