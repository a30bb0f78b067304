package blob_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/strata-oci/strata/blob"
)

// ValidateDigest's fast path must agree with ParseDigest on every input.
func TestValidateDigestAgreesWithParse(t *testing.T) {
	good := string(blob.FromBytes([]byte("x")))
	tests := []struct {
		desc string
		in   string
	}{
		{"good", good},
		{"empty", ""},
		{"uppercase hex", "sha256:" + strings.ToUpper(good[7:])},
		{"one short", good[:70]},
		{"one long", good + "0"},
		{"non-hex", good[:70] + "g"},
		{"sha512", "sha512:" + strings.Repeat("a", 128)},
		{"no algorithm", good[7:]},
		{"traversal", "sha256:../../etc/passwd"},
		{"other algorithm same length", "sha257:" + good[7:]},
	}
	for _, tt := range tests {
		got := blob.ValidateDigest(blob.Digest(tt.in))
		_, want := blob.ParseDigest(tt.in)
		if (got == nil) != (want == nil) || (got != nil && !errors.Is(got, blob.ErrInvalidDigest)) {
			t.Errorf("%s: ValidateDigest = %v, ParseDigest = %v", tt.desc, got, want)
		}
	}
}

func FuzzValidateDigest(f *testing.F) {
	f.Add(string(blob.FromBytes(nil)))
	f.Add("sha256:abc")
	f.Fuzz(func(t *testing.T, s string) {
		got := blob.ValidateDigest(blob.Digest(s))
		_, want := blob.ParseDigest(s)
		if (got == nil) != (want == nil) {
			t.Fatalf("%q: ValidateDigest = %v, ParseDigest = %v", s, got, want)
		}
	})
}
