package blob

import (
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/strata-oci/strata/internal/trunc"
)

// Digest is an OCI content digest. Strata accepts only sha256.
type Digest = digest.Digest

// Algorithm is the only digest algorithm Strata stores.
const Algorithm = digest.SHA256

// ParseDigest parses s as a sha256 digest ("sha256:" followed by 64 lowercase
// hex characters). Any other algorithm or a malformed digest is an error that
// wraps ErrInvalidDigest and names what is wrong.
func ParseDigest(s string) (Digest, error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrInvalidDigest, trunc.String(s, 100), err)
	}
	if d.Algorithm() != Algorithm {
		return "", fmt.Errorf("%w: %q: algorithm %q is not supported (only sha256)", ErrInvalidDigest, trunc.String(s, 100), d.Algorithm())
	}
	return d, nil
}

// ValidateDigest reports whether d is a well-formed sha256 digest, with the
// same verdict and errors as ParseDigest. It runs on every tier operation,
// so the well-formed case ("sha256:" and 64 lowercase hex digits, exactly
// what ParseDigest accepts) is checked without parsing or allocating.
func ValidateDigest(d Digest) error {
	const prefix = "sha256:"
	s := string(d)
	if len(s) == len(prefix)+64 && s[:len(prefix)] == prefix {
		ok := true
		for i := len(prefix); i < len(s); i++ {
			if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				ok = false
				break
			}
		}
		if ok {
			return nil
		}
	}
	_, err := ParseDigest(s)
	return err
}

// FromBytes returns the sha256 digest of b.
func FromBytes(b []byte) Digest { return Algorithm.FromBytes(b) }

// EmptyDigest is the digest of the empty blob.
var EmptyDigest = FromBytes(nil)
