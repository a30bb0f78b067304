package tiers

import "github.com/strata-oci/strata/blob"

// validateDigest is blob.ValidateDigest with a fast path for the well-formed
// case (sha256 and 64 lowercase hex digits, exactly what ValidateDigest
// accepts), which runs on every stack operation; anything else gets
// ValidateDigest's verdict and error.
func validateDigest(d blob.Digest) error {
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
	return blob.ValidateDigest(d)
}
