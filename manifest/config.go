package manifest

import (
	"bytes"
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/trunc"
	"github.com/strata-oci/strata/manifest/internal/strictjson"
)

// Config is a validated image config (OCI or Docker).
type Config struct {
	// MediaType is the declared media type, or the OCI config type when
	// none was declared.
	MediaType types.MediaType
	// Digest is the sha256 of the exact bytes parsed.
	Digest blob.Digest
	// Platform is the image's os, architecture, variant, os.version and
	// os.features, as the config states them (not normalized; OS and
	// Architecture may be empty, see ParseConfig).
	Platform Platform
	// DiffIDs are the digests of the uncompressed layers, in order.
	DiffIDs []blob.Digest
	// File is the whole config as go-containerregistry decodes it (env,
	// entrypoint, cmd, working dir, user, labels, history ...).
	File *v1.ConfigFile

	raw []byte
}

// Raw returns the config's exact bytes. The caller must not modify them.
func (c *Config) Raw() []byte { return c.raw }

// Size returns the length of the config's bytes.
func (c *Config) Size() int64 { return int64(len(c.raw)) }

type wireConfig struct {
	Architecture string   `json:"architecture"`
	OS           string   `json:"os"`
	OSVersion    string   `json:"os.version"`
	OSFeatures   []string `json:"os.features"`
	Variant      string   `json:"variant"`
	RootFS       *struct {
		Type    string    `json:"type"`
		DiffIDs *[]string `json:"diff_ids"`
	} `json:"rootfs"`
}

var configSchema = &strictjson.Object{Fields: map[string]*strictjson.Object{
	"architecture": nil, "os": nil, "os.version": nil, "os.features": nil, "variant": nil,
	"rootfs":  {Fields: fields("type", "diff_ids")},
	"created": nil, "author": nil, "config": nil, "history": nil,
}}

// ParseConfig parses an image config. contentType is the config
// descriptor's media type; empty or generic declares nothing, and anything
// but an OCI or Docker image config is an error wrapping
// ErrUnknownMediaType. The config must have a rootfs of type "layers" whose
// diff_ids are sha256 digests. ParseConfig copies data.
//
// Two deliberate leniencies, both for images real tools write: os and
// architecture may be empty (go-containerregistry's empty.Image, and so
// `crane append` onto scratch, leaves them empty; Docker then assumes the
// host's), and diff_ids may be null or absent for an image without layers
// (go-containerregistry writes null). Neither weakens a check:
// CheckAgainst compares the diff_id count with the manifest's layers, and
// platform selection happens on the index, not on the config.
// Errors wrap ErrInvalid or ErrUnknownMediaType and name the digest.
func ParseConfig(contentType string, data []byte) (*Config, error) {
	dg := blob.FromBytes(data)
	c, err := parseConfig(contentType, dg, data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", dg, err)
	}
	return c, nil
}

func parseConfig(contentType string, dg blob.Digest, data []byte) (*Config, error) {
	mt, err := declaredType(contentType)
	if err != nil {
		return nil, err
	}
	if mt == "" {
		mt = types.OCIConfigJSON
	}
	if !IsImageConfig(mt) {
		return nil, fmt.Errorf("%w: %q is not an image config media type", ErrUnknownMediaType, trunc.String(string(mt), 200))
	}
	if err := strictjson.Check(data, configSchema); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var w wireConfig
	if err := json.Unmarshal(data, &w); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, describeJSONError(err))
	}
	switch {
	case w.RootFS == nil:
		return nil, fmt.Errorf("%w: rootfs: missing", ErrInvalid)
	case w.RootFS.Type != "layers":
		return nil, fmt.Errorf("%w: rootfs.type: %q, want \"layers\"", ErrInvalid, trunc.String(w.RootFS.Type, 100))
	}
	var diffIDs []string
	if w.RootFS.DiffIDs != nil {
		diffIDs = *w.RootFS.DiffIDs
	}
	c := &Config{
		MediaType: mt, Digest: dg, raw: bytes.Clone(data),
		Platform: Platform{OS: w.OS, Architecture: w.Architecture, Variant: w.Variant, OSVersion: w.OSVersion, OSFeatures: w.OSFeatures},
		DiffIDs:  make([]blob.Digest, len(diffIDs)),
	}
	for i, s := range diffIDs {
		d, err := blob.ParseDigest(s)
		if err != nil {
			return nil, fmt.Errorf("%w: rootfs.diff_ids[%d]: %w", ErrInvalid, i, err)
		}
		c.DiffIDs[i] = d
	}
	var f v1.ConfigFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, describeJSONError(err))
	}
	c.File = &f
	return c, nil
}

// CheckAgainst reports whether c is the config of m: m's config descriptor
// must carry c's digest and size, m must not be an artifact, and c must list
// one diff_id per layer of m. Errors wrap ErrConfigMismatch.
func (c *Config) CheckAgainst(m *Manifest) error {
	switch {
	case m.IsArtifact():
		return fmt.Errorf("%w: manifest %s is an artifact (config %s), not an image", ErrConfigMismatch, m.Digest, m.Config.MediaType)
	case m.Config.Digest != c.Digest:
		return fmt.Errorf("%w: manifest %s names config %s, got %s", ErrConfigMismatch, m.Digest, m.Config.Digest, c.Digest)
	case m.Config.Size != c.Size():
		return fmt.Errorf("%w: manifest %s says config %s has %d bytes, got %d", ErrConfigMismatch, m.Digest, c.Digest, m.Config.Size, c.Size())
	case len(c.DiffIDs) != len(m.Layers):
		return fmt.Errorf("%w: config %s lists %d diff_ids, manifest %s has %d layers", ErrConfigMismatch, c.Digest, len(c.DiffIDs), m.Digest, len(m.Layers))
	}
	return nil
}
