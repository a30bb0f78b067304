package reapi

import (
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/strata-oci/strata/blob"
)

func TestDecodeRef(t *testing.T) {
	k := blob.RefKey{Namespace: "tag", Scope: "s", Name: "n"}
	d := blob.FromBytes([]byte("target"))
	hexd := d.Encoded()
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	entry := func(hash string, size int64) *repb.ActionResult {
		return &repb.ActionResult{OutputFiles: []*repb.OutputFile{
			{Path: blobOutput, Digest: &repb.Digest{Hash: hash, SizeBytes: size}},
			{Path: metaOutput, Digest: &repb.Digest{Hash: strings.Repeat("0", 64), SizeBytes: 1}},
		}}
	}
	good := `{"version":1,"namespace":"tag","scope":"s","name":"n","digest":"` + string(d) + `","size":6,"mediaType":"m"}`
	tests := []struct {
		desc    string
		res     *repb.ActionResult
		meta    string
		wantWhy string // "" means a live ref
	}{
		{"live", entry(hexd, 6), good, ""},
		{"live with future expiry", entry(hexd, 6), strings.Replace(good, `"size"`, `"expires":"2026-11-27T12:00:01Z","size"`, 1), ""},
		{"expired now", entry(hexd, 6), strings.Replace(good, `"size"`, `"expires":"2026-11-27T12:00:00Z","size"`, 1), "expired"},
		{"tombstone", &repb.ActionResult{}, `{"version":1,"namespace":"tag","scope":"s","name":"n","size":0,"deleted":true}`, "deleted"},
		{"other key", entry(hexd, 6), strings.Replace(good, `"scope":"s"`, `"scope":"t"`, 1), "another key"},
		{"newer version", entry(hexd, 6), strings.Replace(good, `"version":1`, `"version":2`, 1), "version"},
		{"not JSON", entry(hexd, 6), `{"version":`, "not valid JSON"},
		{"no blob output", &repb.ActionResult{}, good, "no blob output"},
		{"blob output disagrees on size", entry(hexd, 7), good, "disagrees"},
		{"blob output disagrees on digest", entry(strings.Repeat("a", 64), 6), good, "disagrees"},
		{"malformed blob digest", entry("../../x", 6), good, "disagrees"},
		{"negative size", entry(hexd, -1), strings.Replace(good, `"size":6`, `"size":-1`, 1), "disagrees"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			r, why := decodeRef(k, tt.res, []byte(tt.meta), now)
			if tt.wantWhy == "" {
				if why != "" || r.Digest != d || r.Size != 6 || r.MediaType != "m" {
					t.Fatalf("decodeRef = %+v, %q; want a live ref", r, why)
				}
				return
			}
			if !strings.Contains(why, tt.wantWhy) {
				t.Fatalf("decodeRef = %+v, %q; want a miss because %q", r, why, tt.wantWhy)
			}
		})
	}
}

func FuzzDecodeRef(f *testing.F) {
	d := blob.FromBytes([]byte("target"))
	f.Add([]byte(`{"version":1,"namespace":"tag","scope":"s","name":"n","digest":"`+string(d)+`","size":6}`), d.Encoded(), int64(6))
	f.Add([]byte(`{"version":1,"deleted":true}`), "", int64(0))
	f.Add([]byte(`{"version":1,"namespace":"tag","scope":"s","name":"n","expires":"bogus"}`), d.Encoded(), int64(-5))
	k := blob.RefKey{Namespace: "tag", Scope: "s", Name: "n"}
	f.Fuzz(func(t *testing.T, meta []byte, hash string, size int64) {
		res := &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: blobOutput, Digest: &repb.Digest{Hash: hash, SizeBytes: size}}}}
		r, why := decodeRef(k, res, meta, time.Unix(0, 0))
		if why != "" {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted an invalid ref %+v: %v", r, err)
		}
		if r.Digest.Encoded() != hash || r.Size != size {
			t.Fatalf("ref %+v does not match the blob output %s/%d", r, hash, size)
		}
	})
}
