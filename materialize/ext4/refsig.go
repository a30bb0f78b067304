package ext4

import (
	"fmt"
	"strconv"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/refsig"
)

// errUntrusted marks a derivation ref whose signature does not verify: it
// is treated as a miss (the image is converted again) and never followed.
var errUntrusted = fmt.Errorf("ext4: derivation ref not signed with this converter's key: %w", blob.ErrNotFound)

// refSignature authenticates that a ref key names the derived image d of
// size bytes, under Config.SigningKey.
func (c *Converter) refSignature(k blob.RefKey, d blob.Digest, size int64) []byte {
	return refsig.MAC(c.cfg.SigningKey, "strata-ext4-ref/v1", k.String(), string(d), strconv.FormatInt(size, 10))
}

// signedRef is the ref that points derivation k at image d.
func (c *Converter) signedRef(k blob.RefKey, d blob.Digest, size int64) blob.Ref {
	return blob.Ref{Digest: d, Size: size, MediaType: refsig.Attach(MediaType, c.refSignature(k, d, size))}
}

// verifyRef returns nil if r carries a valid signature for k, else
// errUntrusted (wrapped with what is wrong).
func (c *Converter) verifyRef(k blob.RefKey, r blob.Ref) error {
	base, ok := refsig.Split(r.MediaType, func(string) []byte { return c.refSignature(k, r.Digest, r.Size) })
	if !ok || base != MediaType {
		return fmt.Errorf("%w (%s: unsigned, bad signature or not an ext4 image)", errUntrusted, k)
	}
	return nil
}
