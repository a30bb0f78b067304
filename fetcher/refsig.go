package fetcher

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/refsig"
)

// refSignature authenticates everything a ref says: its key, digest, size,
// media type and expiry, under Config.SigningKey.
func (f *Fetcher) refSignature(k blob.RefKey, r blob.Ref) []byte {
	exp := ""
	if !r.Expires.IsZero() {
		exp = strconv.FormatInt(r.Expires.UnixNano(), 10)
	}
	return refsig.MAC(f.refKey, "strata-fetcher-ref/v1", k.String(), string(r.Digest), strconv.FormatInt(r.Size, 10), r.MediaType, exp)
}

// sign returns r carrying its signature for k.
func (f *Fetcher) sign(k blob.RefKey, r blob.Ref) blob.Ref {
	r.MediaType = refsig.Attach(r.MediaType, f.refSignature(k, r))
	return r
}

// verify checks the signature r carries for k and returns r without it. A
// ref without a valid signature (forged in a shared tier, or signed by a
// host with another key) is reported as blob.ErrNotFound: never trusted.
func (f *Fetcher) verify(k blob.RefKey, r blob.Ref) (blob.Ref, error) {
	signed := r.MediaType
	base, ok := refsig.Split(signed, func(base string) []byte {
		r.MediaType = base
		return f.refSignature(k, r)
	})
	if !ok {
		f.cfg.Logger.Debug("fetcher: ignoring a ref whose signature does not verify", "ref", k.String())
		return blob.Ref{}, fmt.Errorf("ref %s: %w (unsigned or bad signature)", k, blob.ErrNotFound)
	}
	r.MediaType = base
	return r, nil
}

// RefMediaType returns the media type a ref's MediaType field names,
// without the signature parameter that signed refs (the fetcher's and the
// ext4 converter's) carry after a ';'. For display: it verifies nothing.
func RefMediaType(mediaType string) string {
	mt, _, _ := strings.Cut(mediaType, ";")
	return strings.TrimSpace(mt)
}
