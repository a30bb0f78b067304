package manifest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/trunc"
)

// MaxDescriptorSize is the largest size a descriptor may declare (layer,
// config, index entry, subject): 1 TiB. Parsing rejects a larger one with
// ErrInvalid.
//
// No real image comes near it: the largest layers seen in the wild (CUDA,
// ML model images) are a few GiB, rarely tens. What it stops is a crafted
// size: readers downstream count bytes
// against the declared size, and a value near 2^63 is where such counting
// overflows (a size of 9223372036854775807 crashed the verifying reader).
// Under the cap, size+1 and any sum of a few sizes fit an int64 with room
// to spare. It is a sanity bound, not a resource limit: hosts apply their
// own, smaller per-blob cap (registry.Config.MaxBlob).
const MaxDescriptorSize = 1 << 40

// Descriptor points at content by media type, digest and size (the OCI
// content descriptor).
type Descriptor struct {
	MediaType types.MediaType
	Digest    blob.Digest
	Size      int64
	// URLs are where a non-distributable (foreign) layer may be fetched from.
	URLs        []string
	Annotations map[string]string
	// Platform is set on index entries that declare one.
	Platform     *Platform
	ArtifactType string
	// Data is the embedded content, if the descriptor carries it; it has
	// been checked against Digest and Size.
	Data []byte
}

// Foreign reports whether the descriptor is a non-distributable (OCI) or
// foreign (Docker) layer, whose content may live at URLs rather than in the
// registry.
func (d Descriptor) Foreign() bool { return IsForeignLayer(d.MediaType) }

// Compression returns the layer's compression; see Compression.
func (d Descriptor) Compression() (Codec, error) { return Compression(d.MediaType) }

// V1 converts d to go-containerregistry's descriptor type.
func (d Descriptor) V1() v1.Descriptor {
	h, _ := v1.NewHash(string(d.Digest)) // always a valid sha256 after parsing
	out := v1.Descriptor{
		MediaType: d.MediaType, Size: d.Size, Digest: h,
		Data: slices.Clone(d.Data), URLs: slices.Clone(d.URLs),
		Annotations: maps.Clone(d.Annotations), ArtifactType: d.ArtifactType,
	}
	if d.Platform != nil {
		p := d.Platform.V1()
		out.Platform = &p
	}
	return out
}

// wireDescriptor is a descriptor as JSON carries it; fields are checked by
// validate before anything else sees them.
type wireDescriptor struct {
	MediaType    *string           `json:"mediaType"`
	Digest       *string           `json:"digest"`
	Size         *jsonInt          `json:"size"`
	URLs         []string          `json:"urls"`
	Annotations  map[string]string `json:"annotations"`
	Platform     *wirePlatform     `json:"platform"`
	ArtifactType string            `json:"artifactType"`
	Data         json.RawMessage   `json:"data"`
}

type wirePlatform struct {
	Architecture string   `json:"architecture"`
	OS           string   `json:"os"`
	OSVersion    string   `json:"os.version"`
	OSFeatures   []string `json:"os.features"`
	Variant      string   `json:"variant"`
	Features     []string `json:"features"`
}

// descriptor validates w and converts it. Errors name the field by path.
func (w *wireDescriptor) descriptor(path string) (Descriptor, error) {
	var d Descriptor
	if w == nil {
		return d, fmt.Errorf("%s: missing", path)
	}
	if w.MediaType == nil || *w.MediaType == "" {
		return d, fmt.Errorf("%s.mediaType: missing", path)
	}
	if err := validMediaType(*w.MediaType); err != nil {
		return d, fmt.Errorf("%s.mediaType: %v", path, err)
	}
	d.MediaType = types.MediaType(*w.MediaType)
	if w.Digest == nil {
		return d, fmt.Errorf("%s.digest: missing", path)
	}
	dg, err := blob.ParseDigest(*w.Digest)
	if err != nil {
		return d, fmt.Errorf("%s.digest: %w", path, err)
	}
	d.Digest = dg
	if w.Size == nil {
		return d, fmt.Errorf("%s.size: missing", path)
	}
	size, err := parseInt(*w.Size)
	if err != nil {
		return d, fmt.Errorf("%s.size: %v", path, err)
	}
	if size < 0 {
		return d, fmt.Errorf("%s.size: negative (%d) for %s", path, size, dg)
	}
	if size > MaxDescriptorSize {
		return d, fmt.Errorf("%s.size: %d bytes for %s exceeds the %d-byte cap on descriptor sizes", path, size, dg, int64(MaxDescriptorSize))
	}
	d.Size = size
	for i, u := range w.URLs {
		pu, err := url.Parse(u)
		if err != nil || !pu.IsAbs() || pu.Host == "" {
			return d, fmt.Errorf("%s.urls[%d]: %q is not an absolute URL", path, i, trunc.String(u, 200))
		}
	}
	d.URLs = w.URLs
	d.Annotations = w.Annotations
	if w.ArtifactType != "" {
		if err := validMediaType(w.ArtifactType); err != nil {
			return d, fmt.Errorf("%s.artifactType: %v", path, err)
		}
	}
	d.ArtifactType = w.ArtifactType
	if len(w.Data) > 0 && !bytes.Equal(w.Data, []byte("null")) {
		var data []byte
		if err := json.Unmarshal(w.Data, &data); err != nil {
			return d, fmt.Errorf("%s.data: not base64: %v", path, err)
		}
		if int64(len(data)) != d.Size {
			return d, fmt.Errorf("%s.data: %d bytes but size is %d", path, len(data), d.Size)
		}
		if got := blob.FromBytes(data); got != d.Digest {
			return d, fmt.Errorf("%s.data: content has digest %s, descriptor says %s", path, got, d.Digest)
		}
		d.Data = data
	}
	if w.Platform != nil {
		p, err := w.Platform.platform(path + ".platform")
		if err != nil {
			return d, err
		}
		d.Platform = &p
	}
	return d, nil
}

// platform converts a descriptor's platform. Empty os or architecture are
// kept rather than rejected (go-containerregistry writes them for images
// whose config has none); such entries are never selected.
func (w *wirePlatform) platform(path string) (Platform, error) {
	return Platform{
		OS: w.OS, Architecture: w.Architecture, Variant: w.Variant, OSVersion: w.OSVersion,
		OSFeatures: w.OSFeatures, Features: w.Features,
	}, nil
}

// jsonInt holds a JSON value that must be an integer literal; it is parsed
// by parseInt so that errors name the field.
type jsonInt []byte

// UnmarshalJSON keeps the literal.
func (n *jsonInt) UnmarshalJSON(b []byte) error {
	*n = append((*n)[:0], b...)
	return nil
}

// parseInt parses an integer literal in the int64 range. Strings, floats,
// exponents and anything else are errors.
func parseInt(n jsonInt) (int64, error) {
	v, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s is not an integer in the int64 range", trunc.String(string(n), 40))
	}
	return v, nil
}
