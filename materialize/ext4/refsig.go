package ext4

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/strata-oci/strata/blob"
)

// sigParam is the media-type parameter that carries a derivation ref's
// signature.
const sigParam = "; sig="

// errUntrusted marks a derivation ref whose signature does not verify: it
// is treated as a miss (the image is converted again) and never followed.
var errUntrusted = fmt.Errorf("ext4: derivation ref not signed with this converter's key: %w", blob.ErrNotFound)

// refSignature authenticates that a ref key names the derived image d of
// size bytes: HMAC-SHA256 under Config.SigningKey of a length-prefixed
// encoding of the three.
func (c *Converter) refSignature(k blob.RefKey, d blob.Digest, size int64) []byte {
	mac := hmac.New(sha256.New, c.cfg.SigningKey)
	for _, f := range []string{"strata-ext4-ref/v1", k.String(), string(d), strconv.FormatInt(size, 10)} {
		fmt.Fprintf(mac, "%d:%s", len(f), f)
	}
	return mac.Sum(nil)
}

// signedRef is the ref that points derivation k at image d.
func (c *Converter) signedRef(k blob.RefKey, d blob.Digest, size int64) blob.Ref {
	return blob.Ref{Digest: d, Size: size, MediaType: MediaType + sigParam + hex.EncodeToString(c.refSignature(k, d, size))}
}

// verifyRef returns nil if r carries a valid signature for k, else
// errUntrusted (wrapped with what is wrong).
func (c *Converter) verifyRef(k blob.RefKey, r blob.Ref) error {
	mt, sig, ok := strings.Cut(r.MediaType, sigParam)
	if !ok || mt != MediaType {
		return fmt.Errorf("%w (%s has no signature)", errUntrusted, k)
	}
	got, err := hex.DecodeString(sig)
	if err != nil || !hmac.Equal(got, c.refSignature(k, r.Digest, r.Size)) {
		return fmt.Errorf("%w (%s: bad signature)", errUntrusted, k)
	}
	return nil
}
