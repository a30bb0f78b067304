package manifest

import (
	"regexp"
	"testing"
)

// The OCI image-spec's regular expression, the oracle for validMediaType.
var mediaTypeRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$`)

func FuzzValidMediaType(f *testing.F) {
	for _, s := range []string{"application/vnd.oci.image.manifest.v1+json", "a/b", "/b", "a/", "a/b/c", "a/-b", "-a/b", "a b/c", "a/b\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := validMediaType(s) == nil, mediaTypeRE.MatchString(s); got != want {
			t.Fatalf("validMediaType(%q) ok=%v, the spec's regexp says %v", s, got, want)
		}
	})
}

func TestValidMediaTypeLengths(t *testing.T) {
	long := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = 'a'
		}
		return string(b)
	}
	for _, tt := range []struct {
		desc string
		in   string
	}{
		{"127-byte subtype", "a/" + long(127)},
		{"128-byte subtype", "a/" + long(128)},
		{"128-byte type", long(128) + "/a"},
		{"symbols after first", "a!#$&^_.+-/b!#$&^_.+-"},
		{"symbol first", "+a/b"},
		{"non-ASCII", "ä/b"},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			if got, want := validMediaType(tt.in) == nil, mediaTypeRE.MatchString(tt.in); got != want {
				t.Fatalf("validMediaType(%q) ok=%v, regexp %v", tt.in, got, want)
			}
		})
	}
}
