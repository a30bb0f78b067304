package manifest_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
)

func TestParseFixtures(t *testing.T) {
	tests := []struct {
		desc        string
		file        string
		contentType string
		kind        manifest.Kind
		mediaType   types.MediaType
		check       func(t *testing.T, d *manifest.Document)
	}{
		{
			desc: "docker hub manifest list served with its media type", file: "dockerhub-list.json",
			contentType: string(types.DockerManifestList), kind: manifest.KindIndex, mediaType: types.DockerManifestList,
			check: func(t *testing.T, d *manifest.Document) {
				if n := len(d.Index.Manifests); n != 10 {
					t.Errorf("%d entries, want 10", n)
				}
				if p := d.Index.Manifests[7].Platform; p == nil || p.OSVersion != "10.0.20348.2582" {
					t.Errorf("windows entry platform = %+v", p)
				}
				if n := len(d.Index.Platforms()); n != 9 {
					t.Errorf("Platforms() has %d entries, want 9 (attestation excluded)", n)
				}
			},
		},
		{
			desc: "buildkit OCI index with attestations, Content-Type with parameters", file: "buildkit-index.json",
			contentType: "Application/VND.oci.image.index.v1+json; charset=utf-8", kind: manifest.KindIndex, mediaType: types.OCIImageIndex,
			check: func(t *testing.T, d *manifest.Document) {
				if n := len(d.Index.Platforms()); n != 4 {
					t.Errorf("Platforms() has %d entries, want 4 (attestations excluded)", n)
				}
				if d.Index.Annotations["org.opencontainers.image.created"] == "" {
					t.Error("annotations lost")
				}
			},
		},
		{
			desc: "docker schema 2 manifest, generic Content-Type", file: "docker-manifest.json",
			contentType: "application/json", kind: manifest.KindManifest, mediaType: types.DockerManifestSchema2,
			check: func(t *testing.T, d *manifest.Document) {
				m := d.Manifest
				if len(m.Layers) != 3 || m.IsArtifact() || m.Foreign() {
					t.Errorf("layers=%d artifact=%v foreign=%v", len(m.Layers), m.IsArtifact(), m.Foreign())
				}
				if c, err := m.Layers[0].Compression(); err != nil || c != manifest.Gzip {
					t.Errorf("Compression = %v, %v", c, err)
				}
			},
		},
		{
			desc: "OCI manifest without embedded mediaType, no Content-Type, zstd and plain layers, unknown fields",
			file: "oci-manifest-mixed.json", kind: manifest.KindManifest, mediaType: types.OCIManifestSchema1,
			check: func(t *testing.T, d *manifest.Document) {
				var got []manifest.Codec
				for _, l := range d.Manifest.Layers {
					c, err := l.Compression()
					if err != nil {
						t.Fatal(err)
					}
					got = append(got, c)
				}
				if len(got) != 3 || got[0] != manifest.Gzip || got[1] != manifest.Zstd || got[2] != manifest.None {
					t.Errorf("compressions = %v", got)
				}
				if d.Manifest.Layers[1].Annotations == nil {
					t.Error("layer annotations lost")
				}
			},
		},
		{
			desc: "windows image with a foreign base layer and its urls", file: "docker-windows-foreign.json",
			contentType: string(types.DockerManifestSchema2), kind: manifest.KindManifest, mediaType: types.DockerManifestSchema2,
			check: func(t *testing.T, d *manifest.Document) {
				l := d.Manifest.Layers
				if !l[0].Foreign() || l[1].Foreign() || !d.Manifest.Foreign() {
					t.Errorf("Foreign() = %v, %v", l[0].Foreign(), l[1].Foreign())
				}
				if len(l[0].URLs) != 1 || !strings.HasPrefix(l[0].URLs[0], "https://mcr.microsoft.com/") {
					t.Errorf("urls = %v", l[0].URLs)
				}
			},
		},
		{
			desc: "OCI artifact with empty config, embedded data and subject", file: "oci-artifact-sbom.json",
			contentType: string(types.OCIManifestSchema1), kind: manifest.KindManifest, mediaType: types.OCIManifestSchema1,
			check: func(t *testing.T, d *manifest.Document) {
				m := d.Manifest
				if !m.IsArtifact() || m.ArtifactType != "application/spdx+json" || m.Subject == nil {
					t.Errorf("artifact=%v type=%q subject=%v", m.IsArtifact(), m.ArtifactType, m.Subject)
				}
				if string(m.Config.Data) != "{}" {
					t.Errorf("config data = %q", m.Config.Data)
				}
			},
		},
		{
			desc: "helm chart: custom config media type makes an artifact", file: "oci-helm-chart.json",
			kind: manifest.KindManifest, mediaType: types.OCIManifestSchema1,
			check: func(t *testing.T, d *manifest.Document) {
				if !d.Manifest.IsArtifact() {
					t.Error("helm chart not recognised as artifact")
				}
				if _, err := d.Manifest.Layers[0].Compression(); !errors.Is(err, manifest.ErrUnknownMediaType) {
					t.Errorf("Compression of a chart layer = %v, want ErrUnknownMediaType", err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			data := fixture(t, tt.file)
			d, err := manifest.Parse(tt.contentType, data)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if d.Kind() != tt.kind || d.MediaType() != tt.mediaType {
				t.Errorf("kind %v media type %s, want %v %s", d.Kind(), d.MediaType(), tt.kind, tt.mediaType)
			}
			if d.Digest() != blob.FromBytes(data) || string(d.Raw()) != string(data) {
				t.Errorf("digest %s / raw bytes not kept", d.Digest())
			}
			if desc := d.Descriptor(); desc.Size != int64(len(data)) || desc.Digest != d.Digest() {
				t.Errorf("Descriptor() = %+v", desc)
			}
			data[0] = 'X' // Parse must have copied.
			if d.Raw()[0] == 'X' {
				t.Error("Raw aliases the caller's buffer")
			}
			k, mt, err := manifest.Sniff(tt.contentType, d.Raw())
			if err != nil || k != tt.kind || mt != tt.mediaType {
				t.Errorf("Sniff = %v %s %v", k, mt, err)
			}
			tt.check(t, d)
		})
	}
}

func TestParseRejects(t *testing.T) {
	const dm, om = "docker-manifest.json", "oci-manifest-mixed.json"
	badDigest := "sha256:" + strings.Repeat("z", 64)
	tests := []struct {
		desc        string
		contentType string
		data        func(t *testing.T) []byte
		want        error
		msg         string // must appear in the error
	}{
		{"schema 1 by Content-Type", string(types.DockerManifestSchema1Signed), fix("schema1-signed.json"), manifest.ErrSchema1, "schema 1"},
		{"schema 1 unsigned by Content-Type", string(types.DockerManifestSchema1), fix(dm), manifest.ErrSchema1, "schema 1"},
		{"schema 1 by body", "", fix("schema1-signed.json"), manifest.ErrSchema1, "schema 1"},
		{"schema 1 by embedded mediaType", "", mut(dm, func(m map[string]any) { m["mediaType"] = string(types.DockerManifestSchema1) }), manifest.ErrSchema1, "schema 1"},
		{"schemaVersion 3", "", mut(dm, func(m map[string]any) { m["schemaVersion"] = 3 }), manifest.ErrInvalid, "schemaVersion: 3"},
		{"schemaVersion missing", "", mut(dm, func(m map[string]any) { delete(m, "schemaVersion") }), manifest.ErrInvalid, "schemaVersion: missing"},
		{"schemaVersion as string", "", mut(dm, func(m map[string]any) { m["schemaVersion"] = "2" }), manifest.ErrInvalid, "schemaVersion"},
		{"declared OCI, embedded Docker", string(types.OCIManifestSchema1), fix(dm), manifest.ErrMediaTypeMismatch, "declared application/vnd.oci.image.manifest.v1+json"},
		{"declared index, body a manifest", string(types.OCIImageIndex), fix(om), manifest.ErrMediaTypeMismatch, "carries \"config\"/\"layers\""},
		{"declared manifest, body an index without mediaType", string(types.OCIManifestSchema1), mut("buildkit-index.json", func(m map[string]any) { delete(m, "mediaType") }), manifest.ErrMediaTypeMismatch, "carries \"manifests\""},
		{"both manifests and layers", "", mut(om, func(m map[string]any) { m["manifests"] = []any{} }), manifest.ErrMediaTypeMismatch, "both"},
		{"declared config media type", string(types.OCIConfigJSON), fix(om), manifest.ErrUnknownMediaType, "declared media type"},
		{"withdrawn OCI artifact manifest", "", mut(om, func(m map[string]any) { m["mediaType"] = string(manifest.OCIArtifactManifest) }), manifest.ErrUnknownMediaType, "artifact.manifest"},
		{"malformed Content-Type", "application/;;", fix(om), manifest.ErrInvalid, "declared media type"},
		{"neither manifest nor index", "", raw(`{"schemaVersion":2}`), manifest.ErrInvalid, "neither"},
		{"config missing", string(types.OCIManifestSchema1), mut(om, func(m map[string]any) { delete(m, "config") }), manifest.ErrInvalid, "config: missing"},
		{"layers missing", "", mut(om, func(m map[string]any) { delete(m, "layers") }), manifest.ErrInvalid, "layers: missing"},
		{"layers null", "", mut(om, func(m map[string]any) { m["layers"] = nil }), manifest.ErrInvalid, "layers: missing"},
		{"index manifests missing", string(types.OCIImageIndex), raw(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}`), manifest.ErrInvalid, "manifests: missing"},
		{"layer digest not hex", "", mut(om, func(m map[string]any) { elem(m, "layers", 1)["digest"] = badDigest }), blob.ErrInvalidDigest, "layers[1].digest"},
		{"layer digest sha512", "", mut(om, func(m map[string]any) { elem(m, "layers", 0)["digest"] = "sha512:" + strings.Repeat("a", 128) }), blob.ErrInvalidDigest, "only sha256"},
		{"layer digest missing", "", mut(om, func(m map[string]any) { delete(elem(m, "layers", 0), "digest") }), manifest.ErrInvalid, "layers[0].digest: missing"},
		{"layer size negative", "", mut(om, func(m map[string]any) { elem(m, "layers", 2)["size"] = -1 }), manifest.ErrInvalid, "layers[2].size: negative"},
		{"layer size missing", "", mut(om, func(m map[string]any) { delete(elem(m, "layers", 2), "size") }), manifest.ErrInvalid, "layers[2].size: missing"},
		{"layer size fractional", "", mut(om, func(m map[string]any) { elem(m, "layers", 0)["size"] = 1.5 }), manifest.ErrInvalid, "size"},
		{"layer size beyond int64", "", mut(om, func(m map[string]any) { elem(m, "layers", 0)["size"] = jsonNum("99999999999999999999") }), manifest.ErrInvalid, "size"},
		{"config media type missing", "", mut(om, func(m map[string]any) { delete(m["config"].(map[string]any), "mediaType") }), manifest.ErrInvalid, "config.mediaType: missing"},
		{"config media type malformed", "", mut(om, func(m map[string]any) { m["config"].(map[string]any)["mediaType"] = "not a media type" }), manifest.ErrInvalid, "malformed media type"},
		{"unknown layer media type in an image", "", mut(om, func(m map[string]any) { elem(m, "layers", 0)["mediaType"] = "application/x-rar" }), manifest.ErrUnknownMediaType, `"application/x-rar"`},
		{"in-toto layer in an image manifest", "", mut(om, func(m map[string]any) { elem(m, "layers", 0)["mediaType"] = "application/vnd.in-toto+json" }), manifest.ErrUnknownMediaType, "layers[0].mediaType"},
		{"empty config without artifactType", "", mut("oci-artifact-sbom.json", func(m map[string]any) { delete(m, "artifactType") }), manifest.ErrInvalid, "artifactType: missing"},
		{"embedded data does not match digest", "", mut("oci-artifact-sbom.json", func(m map[string]any) { m["config"].(map[string]any)["data"] = "W10=" }), manifest.ErrInvalid, "config.data"},
		{"embedded data not base64", "", mut("oci-artifact-sbom.json", func(m map[string]any) { m["config"].(map[string]any)["data"] = "!!" }), manifest.ErrInvalid, "not base64"},
		{"relative url", "", mut("docker-windows-foreign.json", func(m map[string]any) { elem(m, "layers", 0)["urls"] = []any{"/v2/blobs/x"} }), manifest.ErrInvalid, "layers[0].urls[0]"},
		{"subject without digest", "", mut("oci-artifact-sbom.json", func(m map[string]any) { delete(m["subject"].(map[string]any), "digest") }), manifest.ErrInvalid, "subject.digest: missing"},
		{"index entry platform os not a string", "", mut("dockerhub-list.json", func(m map[string]any) { elem(m, "manifests", 2)["platform"].(map[string]any)["os"] = true }), manifest.ErrInvalid, "os"},
		{"index entry bad digest", "", mut("dockerhub-list.json", func(m map[string]any) { elem(m, "manifests", 4)["digest"] = "sha256:abc" }), blob.ErrInvalidDigest, "manifests[4].digest"},
		{"annotation value not a string", "", mut(om, func(m map[string]any) { m["annotations"] = map[string]any{"a": 1} }), manifest.ErrInvalid, "annotations"},
		{"duplicate mediaType key", "", raw(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}`), manifest.ErrInvalid, "duplicate key"},
		{"duplicate digest key in a layer", "", raw(`{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":1,"digest":"` + string(blob.FromBytes([]byte("a"))) + `","digest":"` + string(blob.FromBytes([]byte("b"))) + `"},"layers":[]}`), manifest.ErrInvalid, "config.digest: duplicate key"},
		{"key differs only in case", "", raw(`{"schemaVersion":2,"MediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`), manifest.ErrInvalid, "only in case"},
		{"key differs only by Unicode folding", "", raw(`{"schemaVersion":2,"manifests":[],"ſubject":{}}`), manifest.ErrInvalid, "only in case"},
		{"invalid UTF-8", "", raw("{\"schemaVersion\":2,\"manifests\":[],\"annotations\":{\"a\":\"\xff\"}}"), manifest.ErrInvalid, "UTF-8"},
		{"trailing garbage", "", raw(`{"schemaVersion":2,"manifests":[]} {}`), manifest.ErrInvalid, "trailing"},
		{"not an object", "", raw(`[1,2]`), manifest.ErrInvalid, "not a JSON object"},
		{"truncated", "", raw(`{"schemaVersion":2,"manifests":[`), manifest.ErrInvalid, "malformed JSON"},
		{"empty body", string(types.OCIImageIndex), raw(``), manifest.ErrInvalid, "malformed JSON"},
		{"deep nesting", "", raw(`{"schemaVersion":2,"manifests":[],"x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`), manifest.ErrInvalid, "nesting"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			data := tt.data(t)
			_, err := manifest.Parse(tt.contentType, data)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Parse = %v, want %v", err, tt.want)
			}
			t.Log(err)
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not mention %q", err, tt.msg)
			}
			if !strings.Contains(err.Error(), string(blob.FromBytes(data))) {
				t.Errorf("error %q does not name the document digest", err)
			}
		})
	}
}

func jsonNum(s string) json.Number { return json.Number(s) }

func fix(name string) func(*testing.T) []byte {
	return func(t *testing.T) []byte { return fixture(t, name) }
}

func mut(name string, fn func(map[string]any)) func(*testing.T) []byte {
	return func(t *testing.T) []byte { return mutate(t, name, fn) }
}

func raw(s string) func(*testing.T) []byte { return func(*testing.T) []byte { return []byte(s) } }

func TestParseKindMismatch(t *testing.T) {
	if _, err := manifest.ParseManifest("", fixture(t, "dockerhub-list.json")); !errors.Is(err, manifest.ErrMediaTypeMismatch) {
		t.Errorf("ParseManifest(index) = %v", err)
	}
	if _, err := manifest.ParseIndex("", fixture(t, "docker-manifest.json")); !errors.Is(err, manifest.ErrMediaTypeMismatch) {
		t.Errorf("ParseIndex(manifest) = %v", err)
	}
	if m, err := manifest.ParseManifest("", fixture(t, "docker-manifest.json")); err != nil || len(m.Layers) != 3 {
		t.Errorf("ParseManifest = %v", err)
	}
	if ix, err := manifest.ParseIndex("", fixture(t, "dockerhub-list.json")); err != nil || len(ix.Manifests) != 10 {
		t.Errorf("ParseIndex = %v", err)
	}
}

func TestCompression(t *testing.T) {
	tests := []struct {
		desc    string
		mt      types.MediaType
		want    manifest.Codec
		foreign bool
		ok      bool
	}{
		{"OCI tar", types.OCIUncompressedLayer, manifest.None, false, true},
		{"OCI tar+gzip", types.OCILayer, manifest.Gzip, false, true},
		{"OCI tar+zstd", types.OCILayerZStd, manifest.Zstd, false, true},
		{"OCI nondistributable tar", types.OCIUncompressedRestrictedLayer, manifest.None, true, true},
		{"OCI nondistributable gzip", types.OCIRestrictedLayer, manifest.Gzip, true, true},
		{"OCI nondistributable zstd", manifest.OCIRestrictedLayerZstd, manifest.Zstd, true, true},
		{"Docker rootfs gzip", types.DockerLayer, manifest.Gzip, false, true},
		{"Docker rootfs tar", types.DockerUncompressedLayer, manifest.None, false, true},
		{"Docker rootfs zstd (containerd)", manifest.DockerLayerZstd, manifest.Zstd, false, true},
		{"Docker foreign", types.DockerForeignLayer, manifest.Gzip, true, true},
		{"config is no layer", types.OCIConfigJSON, 0, false, false},
		{"in-toto", "application/vnd.in-toto+json", 0, false, false},
		{"empty", "", 0, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			got, err := manifest.Compression(tt.mt)
			if tt.ok != (err == nil) || (err != nil && !errors.Is(err, manifest.ErrUnknownMediaType)) {
				t.Fatalf("Compression(%q) = %v, %v", tt.mt, got, err)
			}
			if got != tt.want || manifest.IsForeignLayer(tt.mt) != tt.foreign || manifest.IsLayer(tt.mt) != tt.ok {
				t.Errorf("Compression(%q) = %v foreign=%v, want %v foreign=%v", tt.mt, got, manifest.IsForeignLayer(tt.mt), tt.want, tt.foreign)
			}
		})
	}
}

func TestV1Conversion(t *testing.T) {
	m, err := manifest.ParseManifest("", fixture(t, "oci-artifact-sbom.json"))
	if err != nil {
		t.Fatal(err)
	}
	v := m.V1()
	if v.Config.Digest.String() != string(m.Config.Digest) || len(v.Layers) != 1 || v.Subject == nil || v.ArtifactType != m.ArtifactType {
		t.Errorf("V1() = %+v", v)
	}
	ix, err := manifest.ParseIndex("", fixture(t, "dockerhub-list.json"))
	if err != nil {
		t.Fatal(err)
	}
	vi := ix.V1()
	if len(vi.Manifests) != 10 || vi.Manifests[7].Platform == nil || vi.Manifests[7].Platform.OSVersion != "10.0.20348.2582" {
		t.Errorf("V1() index = %+v", vi)
	}
}
