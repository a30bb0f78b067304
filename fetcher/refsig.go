package fetcher

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/strata-oci/strata/blob"
)

// sigParam is the media-type parameter that carries a ref's signature.
const sigParam = "; strata-sig="

// refSignature authenticates everything a ref says: its key, digest, size,
// media type and expiry (HMAC-SHA256 under Config.RefKey of a
// length-prefixed encoding).
func (f *Fetcher) refSignature(k blob.RefKey, r blob.Ref) []byte {
	mac := hmac.New(sha256.New, f.refKey)
	exp := ""
	if !r.Expires.IsZero() {
		exp = strconv.FormatInt(r.Expires.UnixNano(), 10)
	}
	for _, s := range []string{"strata-fetcher-ref/v1", k.String(), string(r.Digest), strconv.FormatInt(r.Size, 10), r.MediaType, exp} {
		fmt.Fprintf(mac, "%d:%s", len(s), s)
	}
	return mac.Sum(nil)
}

// sign returns r carrying its signature for k.
func (f *Fetcher) sign(k blob.RefKey, r blob.Ref) blob.Ref {
	sig := hex.EncodeToString(f.refSignature(k, r))
	r.MediaType += sigParam + sig
	return r
}

// verify checks the signature r carries for k and returns r without it. A
// ref without a valid signature (forged in a shared tier, or signed by a
// host with another key) is reported as blob.ErrNotFound: never trusted.
func (f *Fetcher) verify(k blob.RefKey, r blob.Ref) (blob.Ref, error) {
	mt, sig, ok := strings.Cut(r.MediaType, sigParam)
	if !ok {
		return blob.Ref{}, fmt.Errorf("ref %s: %w (unsigned)", k, blob.ErrNotFound)
	}
	r.MediaType = mt
	got, err := hex.DecodeString(sig)
	if err != nil || !hmac.Equal(got, f.refSignature(k, r)) {
		return blob.Ref{}, fmt.Errorf("ref %s: %w (bad signature)", k, blob.ErrNotFound)
	}
	return r, nil
}

// RefMediaType returns the media type a ref's MediaType field names,
// without the signature parameter that signed refs (the fetcher's and the
// ext4 converter's) carry after a ';'. For display: it verifies nothing.
func RefMediaType(mediaType string) string {
	mt, _, _ := strings.Cut(mediaType, ";")
	return strings.TrimSpace(mt)
}
