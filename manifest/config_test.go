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

func TestParseConfig(t *testing.T) {
	c, err := manifest.ParseConfig(string(types.OCIConfigJSON), fixture(t, "config-oci.json"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Platform.String() != "linux/arm64/v8" || len(c.DiffIDs) != 3 || c.Digest != blob.FromBytes(fixture(t, "config-oci.json")) {
		t.Errorf("config = %v %d %s", c.Platform, len(c.DiffIDs), c.Digest)
	}
	if c.File == nil || c.File.Config.User != "101:101" || len(c.File.Config.Entrypoint) != 1 || c.File.Config.Env[0] == "" {
		t.Errorf("File = %+v", c.File)
	}
	w, err := manifest.ParseConfig(string(types.DockerConfigJSON), fixture(t, "config-windows.json"))
	if err != nil {
		t.Fatal(err)
	}
	if w.Platform.OSVersion != "10.0.17763.6054" || w.MediaType != types.DockerConfigJSON {
		t.Errorf("windows config = %+v", w.Platform)
	}
}

func TestParseConfigRejects(t *testing.T) {
	const cf = "config-oci.json"
	tests := []struct {
		desc        string
		contentType string
		data        func(t *testing.T) []byte
		want        error
		msg         string
	}{
		{"artifact config media type", "application/vnd.cncf.helm.config.v1+json", fix(cf), manifest.ErrUnknownMediaType, "not an image config"},
		{"os not a string", "", mut(cf, func(m map[string]any) { m["os"] = 1 }), manifest.ErrInvalid, "os"},
		{"rootfs missing", "", mut(cf, func(m map[string]any) { delete(m, "rootfs") }), manifest.ErrInvalid, "rootfs: missing"},
		{"rootfs type wrong", "", mut(cf, func(m map[string]any) { m["rootfs"].(map[string]any)["type"] = "snapshot" }), manifest.ErrInvalid, "rootfs.type"},
		{"diff_ids not an array", "", mut(cf, func(m map[string]any) { m["rootfs"].(map[string]any)["diff_ids"] = "sha256:x" }), manifest.ErrInvalid, "diff_ids"},
		{"diff_id malformed", "", mut(cf, func(m map[string]any) { m["rootfs"].(map[string]any)["diff_ids"] = []any{"sha256:xyz"} }), blob.ErrInvalidDigest, "diff_ids[0]"},
		{"created not RFC 3339", "", mut(cf, func(m map[string]any) { m["created"] = "yesterday" }), manifest.ErrInvalid, "yesterday"},
		{"case variant of os", "", raw(`{"os":"linux","OS":"windows","architecture":"amd64","rootfs":{"type":"layers","diff_ids":[]}}`), manifest.ErrInvalid, "only in case"},
		{"duplicate architecture", "", raw(`{"os":"linux","architecture":"amd64","architecture":"arm64","rootfs":{"type":"layers","diff_ids":[]}}`), manifest.ErrInvalid, "duplicate key"},
		{"not JSON", "", raw(`nope`), manifest.ErrInvalid, "malformed JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			data := tt.data(t)
			_, err := manifest.ParseConfig(tt.contentType, data)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), string(blob.FromBytes(data))) {
				t.Fatalf("ParseConfig = %v; want %v mentioning %q and the digest", err, tt.want, tt.msg)
			}
		})
	}
}

func TestConfigCheckAgainst(t *testing.T) {
	cfgBytes := fixture(t, "config-oci.json")
	cfg, err := manifest.ParseConfig("", cfgBytes)
	if err != nil {
		t.Fatal(err)
	}
	// A manifest pointing at this config with n layers.
	build := func(n int, cfgDigest blob.Digest, cfgSize int, cfgType types.MediaType) *manifest.Manifest {
		t.Helper()
		layers := make([]map[string]any, n)
		for i := range layers {
			layers[i] = map[string]any{"mediaType": types.OCILayer, "size": 10, "digest": blob.FromBytes([]byte{byte(i)})}
		}
		b, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": types.OCIManifestSchema1,
			"config": map[string]any{"mediaType": cfgType, "size": cfgSize, "digest": cfgDigest}, "layers": layers})
		if err != nil {
			t.Fatal(err)
		}
		m, err := manifest.ParseManifest("", b)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	tests := []struct {
		desc string
		m    *manifest.Manifest
		ok   bool
		msg  string
	}{
		{"matches", build(3, cfg.Digest, len(cfgBytes), types.OCIConfigJSON), true, ""},
		{"too few layers", build(2, cfg.Digest, len(cfgBytes), types.OCIConfigJSON), false, "3 diff_ids, manifest"},
		{"too many layers", build(4, cfg.Digest, len(cfgBytes), types.OCIConfigJSON), false, "has 4 layers"},
		{"other config digest", build(3, blob.FromBytes([]byte("other")), len(cfgBytes), types.OCIConfigJSON), false, "names config"},
		{"wrong config size", build(3, cfg.Digest, 5, types.OCIConfigJSON), false, "has 5 bytes"},
		{"artifact manifest", build(3, cfg.Digest, len(cfgBytes), "application/vnd.example.config+json"), false, "artifact"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			err := cfg.CheckAgainst(tt.m)
			if tt.ok != (err == nil) || (err != nil && (!errors.Is(err, manifest.ErrConfigMismatch) || !strings.Contains(err.Error(), tt.msg))) {
				t.Fatalf("CheckAgainst = %v, want ok=%v mentioning %q", err, tt.ok, tt.msg)
			}
		})
	}
}

func TestParseConfigLeniencies(t *testing.T) {
	tests := []struct {
		desc    string
		in      string
		diffIDs int
	}{
		{"empty os and architecture (go-containerregistry empty.Image)", `{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":["` + string(blob.FromBytes(nil)) + `"]},"config":{}}`, 1},
		{"null diff_ids for an image without layers", `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":null}}`, 0},
		{"absent diff_ids", `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}`, 0},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c, err := manifest.ParseConfig("", []byte(tt.in))
			if err != nil || len(c.DiffIDs) != tt.diffIDs {
				t.Fatalf("ParseConfig = %v, %v", c, err)
			}
		})
	}
}
