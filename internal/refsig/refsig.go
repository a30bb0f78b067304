// Package refsig signs refs: an HMAC-SHA256, over fields the caller
// chooses, carried as a parameter of the ref's media type. Refs read from
// a tier that others can write (a shared remote action cache) are trusted
// only when their signature verifies.
package refsig

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// Param is the media-type parameter that carries a signature.
const Param = "; strata-sig="

// MAC is the HMAC-SHA256 under key of a length-prefixed encoding of fields
// (so no two field lists encode alike).
func MAC(key []byte, fields ...string) []byte {
	mac := hmac.New(sha256.New, key)
	for _, f := range fields {
		fmt.Fprintf(mac, "%d:%s", len(f), f)
	}
	return mac.Sum(nil)
}

// Attach returns mediaType carrying sig.
func Attach(mediaType string, sig []byte) string {
	return mediaType + Param + hex.EncodeToString(sig)
}

// Split returns the media type without its signature, and whether it
// carried one that equals want (compared in constant time).
func Split(signed string, want func(base string) []byte) (base string, ok bool) {
	base, sig, found := strings.Cut(signed, Param)
	if !found {
		return signed, false
	}
	got, err := hex.DecodeString(sig)
	return base, err == nil && hmac.Equal(got, want(base))
}
