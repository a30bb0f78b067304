package manifest

import (
	"fmt"
	"maps"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
)

// Manifest is a validated OCI image manifest or Docker schema 2 manifest.
type Manifest struct {
	// MediaType is the resolved media type (embedded, else declared, else
	// the OCI image manifest type).
	MediaType types.MediaType
	// Digest is the sha256 of the exact bytes parsed.
	Digest       blob.Digest
	Config       Descriptor
	Layers       []Descriptor
	Subject      *Descriptor
	ArtifactType string
	Annotations  map[string]string

	raw []byte
}

// Raw returns the manifest's exact bytes. The caller must not modify them.
func (m *Manifest) Raw() []byte { return m.raw }

// Size returns the length of the manifest's bytes.
func (m *Manifest) Size() int64 { return int64(len(m.raw)) }

// IsArtifact reports whether the manifest describes an artifact rather than
// a runnable image: it declares an artifactType, or its config is not an
// image config. An artifact's layers may have any media type; it has no
// image config to parse.
func (m *Manifest) IsArtifact() bool {
	return m.ArtifactType != "" || !IsImageConfig(m.Config.MediaType)
}

// Foreign reports whether any layer is non-distributable (foreign).
func (m *Manifest) Foreign() bool {
	for _, l := range m.Layers {
		if l.Foreign() {
			return true
		}
	}
	return false
}

// V1 converts m to go-containerregistry's manifest type.
func (m *Manifest) V1() *v1.Manifest {
	out := &v1.Manifest{
		SchemaVersion: 2, MediaType: m.MediaType, Config: m.Config.V1(),
		Annotations: maps.Clone(m.Annotations), ArtifactType: m.ArtifactType,
		Layers: make([]v1.Descriptor, len(m.Layers)),
	}
	for i, l := range m.Layers {
		out.Layers[i] = l.V1()
	}
	if m.Subject != nil {
		s := m.Subject.V1()
		out.Subject = &s
	}
	return out
}

func newManifest(top *wireTop, mt types.MediaType, dg blob.Digest, raw []byte) (*Manifest, error) {
	m := &Manifest{MediaType: mt, Digest: dg, raw: raw, Annotations: top.Annotations}
	if top.Config == nil {
		return nil, fmt.Errorf("%w: config: missing", ErrInvalid)
	}
	cfg, err := top.Config.descriptor("config")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	m.Config = cfg
	if top.ArtifactType != "" {
		if err := validMediaType(top.ArtifactType); err != nil {
			return nil, fmt.Errorf("%w: artifactType: %v", ErrInvalid, err)
		}
	}
	m.ArtifactType = top.ArtifactType
	if cfg.MediaType == types.OCIEmptyJSON && m.ArtifactType == "" {
		return nil, fmt.Errorf("%w: artifactType: missing, required when config.mediaType is %s", ErrInvalid, types.OCIEmptyJSON)
	}
	if top.Layers == nil {
		return nil, fmt.Errorf("%w: layers: missing", ErrInvalid)
	}
	artifact := m.IsArtifact()
	m.Layers = make([]Descriptor, len(*top.Layers))
	for i := range *top.Layers {
		path := fmt.Sprintf("layers[%d]", i)
		l, err := (*top.Layers)[i].descriptor(path)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		if !artifact && !IsLayer(l.MediaType) {
			return nil, fmt.Errorf("%w: %s.mediaType: %q is not an image layer type (known: OCI tar, tar+gzip, tar+zstd and their non-distributable forms, Docker rootfs.diff.tar[.gzip|.zstd], Docker foreign)", ErrUnknownMediaType, path, l.MediaType)
		}
		m.Layers[i] = l
	}
	if top.Subject != nil {
		s, err := top.Subject.descriptor("subject")
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		m.Subject = &s
	}
	return m, nil
}
