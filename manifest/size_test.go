package manifest_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/strata-oci/strata/manifest"
)

// TestDescriptorSizeCap: every descriptor a document carries (config,
// layer, index entry, subject) is refused when its size is negative or
// above MaxDescriptorSize, with an ErrInvalid error that names the
// descriptor's digest and the cap; sizes up to the cap are accepted.
func TestDescriptorSizeCap(t *testing.T) {
	sizes := []struct {
		desc string
		size json.Number
		ok   bool
	}{
		{desc: "MaxInt64", size: json.Number(fmt.Sprint(int64(math.MaxInt64)))},
		{desc: "MaxInt64-1", size: json.Number(fmt.Sprint(int64(math.MaxInt64 - 1)))},
		{desc: "one past the cap", size: json.Number(fmt.Sprint(int64(manifest.MaxDescriptorSize + 1)))},
		{desc: "-1", size: "-1"},
		{desc: "MinInt64", size: json.Number(fmt.Sprint(int64(math.MinInt64)))},
		{desc: "the cap itself", size: json.Number(fmt.Sprint(int64(manifest.MaxDescriptorSize))), ok: true},
		{desc: "zero", size: "0", ok: true},
	}
	where := []struct {
		desc    string
		fixture string
		field   func(m map[string]any) map[string]any
		path    string
	}{
		{desc: "layer", fixture: "docker-manifest.json", field: func(m map[string]any) map[string]any { return elem(m, "layers", 2) }, path: "layers[2].size"},
		{desc: "config", fixture: "docker-manifest.json", field: func(m map[string]any) map[string]any { return m["config"].(map[string]any) }, path: "config.size"},
		{desc: "index entry", fixture: "dockerhub-list.json", field: func(m map[string]any) map[string]any { return elem(m, "manifests", 1) }, path: "manifests[1].size"},
		{desc: "subject", fixture: "oci-artifact-sbom.json", field: func(m map[string]any) map[string]any { return m["subject"].(map[string]any) }, path: "subject.size"},
	}
	for _, w := range where {
		for _, s := range sizes {
			t.Run(w.desc+", "+s.desc, func(t *testing.T) {
				var digest string
				doc := mutate(t, w.fixture, func(m map[string]any) {
					d := w.field(m)
					if d == nil {
						t.Fatalf("fixture %s has no %s", w.fixture, w.desc)
					}
					d["size"] = s.size
					digest = d["digest"].(string)
				})
				_, err := manifest.Parse("", doc)
				if s.ok {
					if err != nil {
						t.Fatalf("size %s refused: %v", s.size, err)
					}
					return
				}
				if !errors.Is(err, manifest.ErrInvalid) {
					t.Fatalf("size %s: err = %v, want ErrInvalid", s.size, err)
				}
				msg := err.Error()
				for _, want := range []string{w.path, digest} {
					if !strings.Contains(msg, want) {
						t.Errorf("error %q does not name %q", msg, want)
					}
				}
				if !strings.HasPrefix(string(s.size), "-") && !strings.Contains(msg, fmt.Sprint(int64(manifest.MaxDescriptorSize))) {
					t.Errorf("error %q does not name the cap", msg)
				}
			})
		}
	}
}
