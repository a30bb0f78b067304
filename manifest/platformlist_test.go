package manifest_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/strata-oci/strata/manifest"
)

// TestSelectErrorBounded: the no-match error of a huge index names a few
// platforms and how many more, not all of them.
func TestSelectErrorBounded(t *testing.T) {
	tests := []struct {
		desc      string
		platforms int
		longOS    bool
		wantMore  string // must appear in the error ("" for none)
	}{
		{"45,000 platforms", 45000, false, "and 44990 more"},
		{"exactly ten", 10, false, ""},
		{"eleven", 11, false, "and 1 more"},
		{"long os names are clipped", 50, true, "and 40 more"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			var b strings.Builder
			b.WriteString(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`)
			for i := range tt.platforms {
				if i > 0 {
					b.WriteString(",")
				}
				os := fmt.Sprintf("os%d", i)
				if tt.longOS {
					os += strings.Repeat("x", 5000)
				}
				fmt.Fprintf(&b, `{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"sha256:%064x","platform":{"os":%q,"architecture":"amd64"}}`, i, os)
			}
			b.WriteString(`]}`)
			ix, err := manifest.ParseIndex("", []byte(b.String()))
			if err != nil {
				t.Fatal(err)
			}
			_, err = ix.Select(manifest.Platform{OS: "linux", Architecture: "riscv64"})
			if !errors.Is(err, manifest.ErrNoMatchingPlatform) {
				t.Fatalf("Select = %v, want ErrNoMatchingPlatform", err)
			}
			msg := err.Error()
			if len(msg) >= 4<<10 {
				t.Errorf("error of %d bytes, want under 4 KiB: %.300s...", len(msg), msg)
			}
			if !strings.Contains(msg, "os0") || !strings.Contains(msg, "os9") {
				t.Errorf("error does not name the first platforms: %.500s", msg)
			}
			if tt.wantMore != "" && !strings.Contains(msg, tt.wantMore) {
				t.Errorf("error lacks %q: %.500s", tt.wantMore, msg)
			}
			if tt.wantMore == "" && strings.Contains(msg, "more") {
				t.Errorf("error says more where there are none: %s", msg)
			}
			if strings.Contains(msg, "os10/") {
				t.Errorf("error names an eleventh platform: %.500s", msg)
			}
		})
	}
}
