package blob_test

import (
	"testing"

	"github.com/strata-oci/strata/blob"
)

// TestWellKnownKeys pins the keys of the well-known namespaces: refs
// written by earlier versions (and by other hosts sharing a tier) are found
// only while these stay the same.
func TestWellKnownKeys(t *testing.T) {
	d := blob.FromBytes([]byte("x"))
	for _, tc := range []struct {
		desc string
		got  blob.RefKey
		want blob.RefKey
	}{
		{"tag", blob.TagKey("r.io/a", "v1"), blob.RefKey{Namespace: "tag", Name: "r.io/a:v1"}},
		{"member", blob.MemberKey("r.io/a", d), blob.RefKey{Namespace: "member", Name: "r.io/a@" + string(d)}},
		{"proof", blob.ProofKey("r.io/a", "id"), blob.RefKey{Namespace: "proof", Scope: "id", Name: "r.io/a"}},
		{"derived", blob.DerivedKey("s", d, "ext4", "max-disk=1", "strata-ext4/1"),
			blob.RefKey{Namespace: "derived", Scope: "s", Name: string(d) + "|ext4|max-disk=1|strata-ext4/1"}},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: key %+v, want %+v", tc.desc, tc.got, tc.want)
		}
	}
}
