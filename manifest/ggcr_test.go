package manifest_test

import (
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	ggcrmutate "github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
)

// Images and indexes written by go-containerregistry (as crane and ko push
// them) parse, and their configs check against their manifests.
func TestParseGGCRImages(t *testing.T) {
	docker, err := random.Image(512, 3)
	if err != nil {
		t.Fatal(err)
	}
	oci := ggcrmutate.ConfigMediaType(ggcrmutate.MediaType(docker, types.OCIManifestSchema1), types.OCIConfigJSON)
	arm, err := ggcrmutate.ConfigFile(oci, &v1.ConfigFile{OS: "linux", Architecture: "arm64", Variant: "v8", RootFS: v1.RootFS{Type: "layers"}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		desc string
		img  v1.Image
	}{
		{"random Docker image", docker},
		{"random image as OCI", oci},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			raw, err := tt.img.RawManifest()
			if err != nil {
				t.Fatal(err)
			}
			mt, err := tt.img.MediaType()
			if err != nil {
				t.Fatal(err)
			}
			m, err := manifest.ParseManifest(string(mt), raw)
			if err != nil {
				t.Fatalf("ParseManifest: %v\n%s", err, raw)
			}
			want, _ := tt.img.Digest()
			if string(m.Digest) != want.String() || m.IsArtifact() || len(m.Layers) != 3 {
				t.Fatalf("digest %s (want %s), artifact %v, %d layers", m.Digest, want, m.IsArtifact(), len(m.Layers))
			}
			cfgRaw, err := tt.img.RawConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := manifest.ParseConfig(string(m.Config.MediaType), cfgRaw)
			if err != nil {
				t.Fatalf("ParseConfig: %v\n%s", err, cfgRaw)
			}
			if err := cfg.CheckAgainst(m); err != nil {
				t.Fatal(err)
			}
		})
	}
	// A config replaced without its layers' diff_ids no longer matches.
	raw, _ := arm.RawManifest()
	m, err := manifest.ParseManifest("", raw)
	if err != nil {
		t.Fatal(err)
	}
	cfgRaw, _ := arm.RawConfigFile()
	cfg, err := manifest.ParseConfig("", cfgRaw)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.CheckAgainst(m); err == nil {
		t.Fatal("config with 0 diff_ids matched a 3-layer manifest")
	}
}

func TestParseGGCRIndex(t *testing.T) {
	var adds []ggcrmutate.IndexAddendum
	for _, p := range []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64", Variant: "v8"}, {OS: "linux", Architecture: "arm", Variant: "v7"}} {
		img, err := random.Image(256, 1)
		if err != nil {
			t.Fatal(err)
		}
		adds = append(adds, ggcrmutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	ix := ggcrmutate.AppendManifests(ggcrmutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
	raw, err := ix.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := manifest.ParseIndex(string(types.OCIImageIndex), raw)
	if err != nil {
		t.Fatalf("ParseIndex: %v\n%s", err, raw)
	}
	for i, want := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7"} {
		d, err := parsed.Select(mustPlatform(t, want))
		if err != nil {
			t.Fatal(err)
		}
		if d.Digest != parsed.Manifests[i].Digest || blob.ValidateDigest(d.Digest) != nil {
			t.Errorf("Select(%s) = entry %s, want entry %d", want, d.Digest, i)
		}
	}
}
