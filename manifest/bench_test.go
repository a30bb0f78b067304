package manifest_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
)

func BenchmarkParse(b *testing.B) {
	layers := make([]map[string]any, 1000)
	for i := range layers {
		layers[i] = map[string]any{"mediaType": types.OCILayer, "size": 1 << 20, "digest": blob.FromBytes([]byte(fmt.Sprint(i))),
			"annotations": map[string]string{"org.opencontainers.image.title": fmt.Sprintf("layer-%d.tar.gz", i)}}
	}
	big, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": types.OCIManifestSchema1,
		"config": map[string]any{"mediaType": types.OCIConfigJSON, "size": 1000, "digest": blob.FromBytes(nil)}, "layers": layers})
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		data []byte
	}{
		{"dockerhub-list", fixture(b, "dockerhub-list.json")},
		{"docker-manifest", fixture(b, "docker-manifest.json")},
		{"1000-layers", big},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.data)))
			for b.Loop() {
				if _, err := manifest.Parse("", bc.data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkSelect(b *testing.B) {
	ix, err := manifest.ParseIndex("", fixture(b, "dockerhub-list.json"))
	if err != nil {
		b.Fatal(err)
	}
	want := manifest.Platform{OS: "windows", Architecture: "amd64", OSVersion: "10.0.17763.1"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ix.Select(want); err != nil {
			b.Fatal(err)
		}
	}
}
