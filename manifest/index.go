package manifest

import (
	"fmt"
	"maps"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
)

// Index is a validated OCI image index or Docker manifest list.
type Index struct {
	// MediaType is the resolved media type (embedded, else declared, else
	// the OCI index type).
	MediaType types.MediaType
	// Digest is the sha256 of the exact bytes parsed.
	Digest       blob.Digest
	Manifests    []Descriptor
	Subject      *Descriptor
	ArtifactType string
	Annotations  map[string]string

	raw []byte
}

// Raw returns the index's exact bytes. The caller must not modify them.
func (ix *Index) Raw() []byte { return ix.raw }

// Size returns the length of the index's bytes.
func (ix *Index) Size() int64 { return int64(len(ix.raw)) }

// V1 converts ix to go-containerregistry's index type.
func (ix *Index) V1() *v1.IndexManifest {
	out := &v1.IndexManifest{
		SchemaVersion: 2, MediaType: ix.MediaType, Annotations: maps.Clone(ix.Annotations),
		ArtifactType: ix.ArtifactType, Manifests: make([]v1.Descriptor, len(ix.Manifests)),
	}
	for i, d := range ix.Manifests {
		out.Manifests[i] = d.V1()
	}
	if ix.Subject != nil {
		s := ix.Subject.V1()
		out.Subject = &s
	}
	return out
}

// AnnotationReferenceType is the annotation BuildKit sets on index entries
// that are not images (value "attestation-manifest").
const AnnotationReferenceType = "vnd.docker.reference.type"

// selectable reports whether an entry can be chosen for a platform: an image
// manifest with a platform that is not unknown/unknown and not an
// attestation.
func selectable(d Descriptor) bool {
	return IsManifest(d.MediaType) && d.Platform != nil && !unknownPlatform(*d.Platform) &&
		d.Annotations[AnnotationReferenceType] == ""
}

// Platforms returns the platforms of the entries Select can choose, in index
// order. Entries without a platform or with an empty os or architecture,
// attestation manifests (unknown/unknown), nested indexes and non-image
// entries are left out.
func (ix *Index) Platforms() []Platform {
	var out []Platform
	for _, d := range ix.Manifests {
		if selectable(d) {
			out = append(out, *d.Platform)
		}
	}
	return out
}

// Select returns the image manifest for want. It picks the first entry, in
// index order, whose platform Matches want; failing that, the first entry
// with a compatible lower variant, best first (arm v8 > v7 > v6 > v5, amd64
// v4 > v3 > v2 > v1, arm64 v9 > v8), as containerd does. It only considers the entries
// Platforms lists: attestation manifests (unknown/unknown) are never
// selected. No match is an error wrapping ErrNoMatchingPlatform that lists
// the platforms the index offers (the first ten, then how many more).
func (ix *Index) Select(want Platform) (Descriptor, error) {
	want = want.Normalize()
	candidates := []Platform{want}
	for _, v := range fallbackVariants(want) {
		c := want
		c.Variant = v
		candidates = append(candidates, c)
	}
	for _, c := range candidates {
		for _, d := range ix.Manifests {
			if selectable(d) && Match(c, *d.Platform) {
				return d, nil
			}
		}
	}
	return Descriptor{}, fmt.Errorf("%w: want %s; index %s offers %s", ErrNoMatchingPlatform, want, ix.Digest, platformList(ix.Platforms()))
}

func newIndex(top *wireTop, mt types.MediaType, dg blob.Digest, raw []byte) (*Index, error) {
	ix := &Index{MediaType: mt, Digest: dg, raw: raw, Annotations: top.Annotations}
	if top.Manifests == nil {
		return nil, fmt.Errorf("%w: manifests: missing", ErrInvalid)
	}
	if top.ArtifactType != "" {
		if err := validMediaType(top.ArtifactType); err != nil {
			return nil, fmt.Errorf("%w: artifactType: %v", ErrInvalid, err)
		}
	}
	ix.ArtifactType = top.ArtifactType
	ix.Manifests = make([]Descriptor, len(*top.Manifests))
	for i := range *top.Manifests {
		d, err := (*top.Manifests)[i].descriptor(fmt.Sprintf("manifests[%d]", i))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		ix.Manifests[i] = d
	}
	if top.Subject != nil {
		s, err := top.Subject.descriptor("subject")
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		ix.Subject = &s
	}
	return ix, nil
}
