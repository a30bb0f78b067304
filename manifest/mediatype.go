package manifest

import (
	"fmt"
	"mime"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/internal/trunc"
)

// Media types this package knows beyond those go-containerregistry names.
const (
	// OCIRestrictedLayerZstd is the OCI non-distributable zstd layer.
	OCIRestrictedLayerZstd types.MediaType = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
	// DockerLayerZstd is the zstd Docker layer type that containerd and
	// BuildKit write (not part of the Docker schema 2 specification).
	DockerLayerZstd types.MediaType = "application/vnd.docker.image.rootfs.diff.tar.zstd"
	// OCIArtifactManifest is the withdrawn OCI artifact manifest (image-spec
	// 1.1 release candidates); it is rejected as an unknown document type.
	OCIArtifactManifest types.MediaType = "application/vnd.oci.artifact.manifest.v1+json"
)

// Codec is a layer's compression.
type Codec uint8

// Layer compressions.
const (
	None Codec = iota // an uncompressed tar
	Gzip
	Zstd
)

func (c Codec) String() string {
	switch c {
	case None:
		return "none"
	case Gzip:
		return "gzip"
	case Zstd:
		return "zstd"
	}
	return fmt.Sprintf("Codec(%d)", uint8(c))
}

type layerType struct {
	codec   Codec
	foreign bool
}

var layerTypes = map[types.MediaType]layerType{
	types.OCIUncompressedLayer:           {None, false},
	types.OCILayer:                       {Gzip, false},
	types.OCILayerZStd:                   {Zstd, false},
	types.OCIUncompressedRestrictedLayer: {None, true},
	types.OCIRestrictedLayer:             {Gzip, true},
	OCIRestrictedLayerZstd:               {Zstd, true},
	types.DockerUncompressedLayer:        {None, false},
	types.DockerLayer:                    {Gzip, false},
	DockerLayerZstd:                      {Zstd, false},
	types.DockerForeignLayer:             {Gzip, true},
}

// Compression returns the compression of a layer media type: None for the
// plain tar types, Gzip or Zstd. Any other media type is an error wrapping
// ErrUnknownMediaType (artifact layers, configs, manifests).
func Compression(mt types.MediaType) (Codec, error) {
	lt, ok := layerTypes[mt]
	if !ok {
		return None, fmt.Errorf("%w: %q is not an image layer media type", ErrUnknownMediaType, trunc.String(string(mt), 200))
	}
	return lt.codec, nil
}

// IsLayer reports whether mt is an image layer media type this package
// knows (OCI tar, tar+gzip, tar+zstd, their non-distributable forms, and the
// Docker rootfs layer types).
func IsLayer(mt types.MediaType) bool { _, ok := layerTypes[mt]; return ok }

// IsForeignLayer reports whether mt is a non-distributable (OCI) or foreign
// (Docker) layer type: its content may live at the descriptor's URLs rather
// than in the registry.
func IsForeignLayer(mt types.MediaType) bool { return layerTypes[mt].foreign }

// IsImageConfig reports whether mt is an image config (OCI or Docker).
func IsImageConfig(mt types.MediaType) bool {
	return mt == types.OCIConfigJSON || mt == types.DockerConfigJSON
}

// IsManifest reports whether mt is an image manifest (OCI or Docker schema 2).
func IsManifest(mt types.MediaType) bool {
	return mt == types.OCIManifestSchema1 || mt == types.DockerManifestSchema2
}

// IsIndex reports whether mt is an index (OCI index or Docker manifest list).
func IsIndex(mt types.MediaType) bool {
	return mt == types.OCIImageIndex || mt == types.DockerManifestList
}

// IsSchema1 reports whether mt is a Docker schema 1 manifest type.
func IsSchema1(mt types.MediaType) bool {
	return mt == types.DockerManifestSchema1 || mt == types.DockerManifestSchema1Signed
}

// validMediaType checks the RFC 6838 syntax the OCI image-spec requires:
// ^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$
// (hand-written: it runs for every descriptor).
func validMediaType(mt string) error {
	typ, sub, ok := strings.Cut(mt, "/")
	if !ok || !restrictedName(typ) || !restrictedName(sub) {
		return fmt.Errorf("malformed media type %q", trunc.String(mt, 200))
	}
	return nil
}

// restrictedName reports whether s is an RFC 6838 restricted-name.
func restrictedName(s string) bool {
	if len(s) == 0 || len(s) > 127 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && strings.IndexByte("!#$&^_.+-", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// genericContentTypes say nothing about which document a body is; registries
// and proxies send them. They are treated as "not declared".
var genericContentTypes = map[string]bool{
	"":                         true,
	"application/json":         true,
	"text/plain":               true,
	"application/octet-stream": true,
}

// declaredType normalizes a Content-Type value (lower case, parameters
// dropped). It returns "" for a generic or empty value.
func declaredType(contentType string) (types.MediaType, error) {
	contentType = strings.TrimSpace(contentType)
	if contentType == "" {
		return "", nil
	}
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return "", fmt.Errorf("%w: declared media type %q: %v", ErrInvalid, trunc.String(contentType, 200), err)
	}
	if genericContentTypes[mt] {
		return "", nil
	}
	return types.MediaType(mt), nil
}
