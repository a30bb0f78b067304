package blob

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/strata-oci/strata/internal/trunc"
)

// Well-known ref namespaces. Their keys are built by TagKey, MemberKey,
// ProofKey and DerivedKey, so that every package that reads or writes them
// names them alike.
const (
	NamespaceTag     = "tag"     // image reference -> manifest digest
	NamespaceMember  = "member"  // repository@digest -> a blob that repository's registry served
	NamespaceProof   = "proof"   // (registry, repository, credential identity) -> access proof
	NamespaceDerived = "derived" // derivation (image, format, options, version) -> derived blob
)

// TagKey is the key of the tag ref of repository ("registry/repository")
// and tag: global (no scope).
func TagKey(repository, tag string) RefKey {
	return RefKey{Namespace: NamespaceTag, Name: repository + ":" + tag}
}

// MemberKey is the key of the membership ref recording that repository's
// registry served d's verified bytes: global (no scope).
func MemberKey(repository string, d Digest) RefKey {
	return RefKey{Namespace: NamespaceMember, Name: repository + "@" + string(d)}
}

// ProofKey is the key of the access proof that the credential of identity
// made for repository: scoped by the identity.
func ProofKey(repository, identity string) RefKey {
	return RefKey{Namespace: NamespaceProof, Scope: identity, Name: repository}
}

// DerivedKey is the key of the derivation ref naming the blob derived from
// image in format, with options (canonical: everything that changes the
// derived bytes, in one order) by derivation version: scoped by scope
// (empty: global). The caller validates the key (its length is bounded).
func DerivedKey(scope string, image Digest, format, options, version string) RefKey {
	return RefKey{Namespace: NamespaceDerived, Scope: scope, Name: string(image) + "|" + format + "|" + options + "|" + version}
}

// MaxRefKeyLen bounds the encoded length of a ref key.
const MaxRefKeyLen = 1024

// RefKey names a ref. Namespace says what kind of record it is, Scope whose
// it is (a tenant or group; empty for records that are global), Name which
// one. Two keys are the same ref only if all three are equal.
type RefKey struct {
	Namespace string
	Scope     string
	Name      string
}

// Validate checks that the namespace and name are non-empty, that no part
// holds a NUL byte, and that the encoded key fits MaxRefKeyLen. Errors wrap
// ErrInvalidRef.
func (k RefKey) Validate() error {
	switch {
	case k.Namespace == "":
		return fmt.Errorf("%w: empty namespace", ErrInvalidRef)
	case k.Name == "":
		return fmt.Errorf("%w: empty name", ErrInvalidRef)
	case strings.ContainsRune(k.Namespace+k.Scope+k.Name, 0):
		return fmt.Errorf("%w: NUL byte in key", ErrInvalidRef)
	case len(k.String()) > MaxRefKeyLen:
		return fmt.Errorf("%w: encoded key longer than %d bytes", ErrInvalidRef, MaxRefKeyLen)
	}
	return nil
}

// String returns the canonical encoding "namespace/scope/name", each part
// path-escaped (so '/' inside a part becomes %2F). The encoding is
// injective: distinct keys never share a string. ParseRefKey reverses it.
func (k RefKey) String() string {
	return url.PathEscape(k.Namespace) + "/" + url.PathEscape(k.Scope) + "/" + url.PathEscape(k.Name)
}

// ParseRefKey parses the encoding produced by RefKey.String.
func ParseRefKey(s string) (RefKey, error) {
	parts := strings.Split(s, "/")
	if len(parts) != 3 {
		return RefKey{}, fmt.Errorf("%w: %q is not namespace/scope/name", ErrInvalidRef, trunc.String(s, 100))
	}
	var out [3]string
	for i, p := range parts {
		u, err := url.PathUnescape(p)
		if err != nil {
			return RefKey{}, fmt.Errorf("%w: %q: %v", ErrInvalidRef, trunc.String(s, 100), err)
		}
		out[i] = u
	}
	k := RefKey{Namespace: out[0], Scope: out[1], Name: out[2]}
	if k.String() != s {
		return RefKey{}, fmt.Errorf("%w: %q is not canonically encoded", ErrInvalidRef, trunc.String(s, 100))
	}
	return k, k.Validate()
}

// Ref is a small mutable record pointing at a blob.
type Ref struct {
	Digest    Digest
	Size      int64
	MediaType string
	// Expires is when the ref stops being served; zero means never.
	Expires time.Time
}

// Expired reports whether r has expired at now.
func (r Ref) Expired(now time.Time) bool { return !r.Expires.IsZero() && !now.Before(r.Expires) }

// Validate checks the ref's digest and size.
func (r Ref) Validate() error {
	if err := ValidateDigest(r.Digest); err != nil {
		return err
	}
	if r.Size < 0 {
		return fmt.Errorf("%w: negative size %d for %s", ErrInvalidRef, r.Size, r.Digest)
	}
	return nil
}
