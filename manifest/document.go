package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/trunc"
	"github.com/strata-oci/strata/manifest/internal/strictjson"
)

// Kind says which document a body is.
type Kind uint8

// Document kinds.
const (
	KindUnknown  Kind = iota
	KindManifest      // OCI image manifest or Docker schema 2 manifest
	KindIndex         // OCI image index or Docker manifest list
)

func (k Kind) String() string {
	switch k {
	case KindManifest:
		return "manifest"
	case KindIndex:
		return "index"
	}
	return "unknown"
}

// Document is a parsed manifest or index: exactly one of Manifest and Index
// is set.
type Document struct {
	Manifest *Manifest
	Index    *Index
}

// Kind returns KindManifest or KindIndex.
func (d *Document) Kind() Kind {
	if d.Index != nil {
		return KindIndex
	}
	return KindManifest
}

// MediaType returns the document's resolved media type.
func (d *Document) MediaType() types.MediaType {
	if d.Index != nil {
		return d.Index.MediaType
	}
	return d.Manifest.MediaType
}

// Digest returns the sha256 digest of the document's exact bytes.
func (d *Document) Digest() blob.Digest {
	if d.Index != nil {
		return d.Index.Digest
	}
	return d.Manifest.Digest
}

// Raw returns the document's exact bytes. The caller must not modify them.
func (d *Document) Raw() []byte {
	if d.Index != nil {
		return d.Index.raw
	}
	return d.Manifest.raw
}

// Descriptor returns a descriptor of the document itself.
func (d *Document) Descriptor() Descriptor {
	return Descriptor{MediaType: d.MediaType(), Digest: d.Digest(), Size: int64(len(d.Raw()))}
}

// Parse parses a manifest or an index. contentType is the media type the
// transport declared (an HTTP Content-Type, parameters allowed); an empty or
// generic one ("application/json", "application/octet-stream", "text/plain")
// declares nothing. Parse copies data. Errors wrap ErrInvalid, ErrSchema1,
// ErrMediaTypeMismatch or ErrUnknownMediaType and name the document's digest.
func Parse(contentType string, data []byte) (*Document, error) {
	dg := blob.FromBytes(data)
	top, kind, mt, err := sniff(contentType, data)
	if err != nil {
		return nil, docErr(KindUnknown, dg, err)
	}
	raw := bytes.Clone(data)
	switch kind {
	case KindManifest:
		m, err := newManifest(top, mt, dg, raw)
		if err != nil {
			return nil, docErr(kind, dg, err)
		}
		return &Document{Manifest: m}, nil
	default:
		ix, err := newIndex(top, mt, dg, raw)
		if err != nil {
			return nil, docErr(kind, dg, err)
		}
		return &Document{Index: ix}, nil
	}
}

// ParseManifest parses an image manifest; an index is an error wrapping
// ErrMediaTypeMismatch. See Parse.
func ParseManifest(contentType string, data []byte) (*Manifest, error) {
	doc, err := Parse(contentType, data)
	if err != nil {
		return nil, err
	}
	if doc.Manifest == nil {
		return nil, fmt.Errorf("%w: %s is an index (%s), want an image manifest", ErrMediaTypeMismatch, doc.Digest(), doc.MediaType())
	}
	return doc.Manifest, nil
}

// ParseIndex parses an index; an image manifest is an error wrapping
// ErrMediaTypeMismatch. See Parse.
func ParseIndex(contentType string, data []byte) (*Index, error) {
	doc, err := Parse(contentType, data)
	if err != nil {
		return nil, err
	}
	if doc.Index == nil {
		return nil, fmt.Errorf("%w: %s is an image manifest (%s), want an index", ErrMediaTypeMismatch, doc.Digest(), doc.MediaType())
	}
	return doc.Index, nil
}

// Sniff decides which document data is, from the declared contentType and
// the document's own mediaType field (which must agree) or, when neither
// says, from its structure. It returns the kind and the resolved media type
// without validating descriptors; Parse does both.
func Sniff(contentType string, data []byte) (Kind, types.MediaType, error) {
	_, kind, mt, err := sniff(contentType, data)
	if err != nil {
		return KindUnknown, "", docErr(KindUnknown, blob.FromBytes(data), err)
	}
	return kind, mt, nil
}

func docErr(kind Kind, dg blob.Digest, err error) error {
	what := "document"
	if kind != KindUnknown {
		what = kind.String()
	}
	return fmt.Errorf("%s %s: %w", what, dg, err)
}

// wireTop is the top level of a manifest or index as JSON carries it. The
// schema 1 fields are read only to recognise schema 1.
type wireTop struct {
	SchemaVersion *jsonInt          `json:"schemaVersion"`
	MediaType     *string           `json:"mediaType"`
	Config        *wireDescriptor   `json:"config"`
	Layers        *[]wireDescriptor `json:"layers"`
	Manifests     *[]wireDescriptor `json:"manifests"`
	Subject       *wireDescriptor   `json:"subject"`
	ArtifactType  string            `json:"artifactType"`
	Annotations   map[string]string `json:"annotations"`

	FSLayers   json.RawMessage `json:"fsLayers"`
	Signatures json.RawMessage `json:"signatures"`
}

var (
	platformSchema   = &strictjson.Object{Fields: fields("architecture", "os", "os.version", "os.features", "variant", "features")}
	descriptorSchema = &strictjson.Object{Fields: withPlatform(fields("mediaType", "digest", "size", "urls", "annotations", "platform", "artifactType", "data"))}
	topSchema        = &strictjson.Object{Fields: map[string]*strictjson.Object{
		"schemaVersion": nil, "mediaType": nil, "config": descriptorSchema, "layers": descriptorSchema,
		"manifests": descriptorSchema, "subject": descriptorSchema, "artifactType": nil, "annotations": nil,
		"fsLayers": nil, "signatures": nil,
	}}
)

func fields(names ...string) map[string]*strictjson.Object {
	m := make(map[string]*strictjson.Object, len(names))
	for _, n := range names {
		m[n] = nil
	}
	return m
}

func withPlatform(m map[string]*strictjson.Object) map[string]*strictjson.Object {
	m["platform"] = platformSchema
	return m
}

// sniff checks and decodes the top level and resolves kind and media type.
func sniff(contentType string, data []byte) (*wireTop, Kind, types.MediaType, error) {
	declared, err := declaredType(contentType)
	if err != nil {
		return nil, 0, "", err
	}
	if IsSchema1(declared) {
		return nil, 0, "", fmt.Errorf("%w (declared %s)", ErrSchema1, declared)
	}
	if declared != "" && !IsManifest(declared) && !IsIndex(declared) {
		return nil, 0, "", fmt.Errorf("%w: declared media type %q is not an image manifest or index", ErrUnknownMediaType, trunc.String(string(declared), 200))
	}
	if err := strictjson.Check(data, topSchema); err != nil {
		return nil, 0, "", fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var top wireTop
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, 0, "", fmt.Errorf("%w: %v", ErrInvalid, describeJSONError(err))
	}
	var embedded types.MediaType
	if top.MediaType != nil {
		embedded = types.MediaType(*top.MediaType)
		if embedded == "" {
			return nil, 0, "", fmt.Errorf("%w: mediaType: empty", ErrInvalid)
		}
	}
	var version int64
	if top.SchemaVersion != nil {
		if version, err = parseInt(*top.SchemaVersion); err != nil {
			return nil, 0, "", fmt.Errorf("%w: schemaVersion: %v", ErrInvalid, err)
		}
	}
	if IsSchema1(embedded) || version == 1 || top.FSLayers != nil || top.Signatures != nil {
		return nil, 0, "", ErrSchema1
	}
	if top.SchemaVersion == nil {
		return nil, 0, "", fmt.Errorf("%w: schemaVersion: missing", ErrInvalid)
	}
	if version != 2 {
		return nil, 0, "", fmt.Errorf("%w: schemaVersion: %d, want 2", ErrInvalid, version)
	}
	if embedded != "" && !IsManifest(embedded) && !IsIndex(embedded) {
		return nil, 0, "", fmt.Errorf("%w: mediaType %q is not an image manifest or index", ErrUnknownMediaType, trunc.String(string(embedded), 200))
	}
	if declared != "" && embedded != "" && declared != embedded {
		return nil, 0, "", fmt.Errorf("%w: declared %s but the document says %s", ErrMediaTypeMismatch, declared, embedded)
	}
	// Structure: a document with both index and manifest fields is
	// ambiguous (CVE-2021-41190) whatever its media type says.
	isIndex := top.Manifests != nil
	isManifest := top.Config != nil || top.Layers != nil
	if isIndex && isManifest {
		return nil, 0, "", fmt.Errorf("%w: document has both \"manifests\" and \"config\"/\"layers\"", ErrMediaTypeMismatch)
	}
	mt := embedded
	if mt == "" {
		mt = declared
	}
	switch {
	case mt == "" && isIndex:
		mt = types.OCIImageIndex
	case mt == "" && isManifest:
		mt = types.OCIManifestSchema1
	case mt == "":
		return nil, 0, "", fmt.Errorf("%w: no mediaType and neither \"manifests\" nor \"config\"/\"layers\"", ErrInvalid)
	case IsIndex(mt) && isManifest:
		return nil, 0, "", fmt.Errorf("%w: %s carries \"config\"/\"layers\"", ErrMediaTypeMismatch, mt)
	case IsManifest(mt) && isIndex:
		return nil, 0, "", fmt.Errorf("%w: %s carries \"manifests\"", ErrMediaTypeMismatch, mt)
	}
	if IsIndex(mt) {
		return &top, KindIndex, mt, nil
	}
	return &top, KindManifest, mt, nil
}

// describeJSONError turns decoding errors into messages that name the field
// without echoing Go type names.
func describeJSONError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("%s: JSON %s where the specification wants %s", orTop(te.Field), te.Value, jsonKind(te.Type.Kind().String()))
	}
	return err.Error()
}

func orTop(field string) string {
	if field == "" {
		return "document"
	}
	return field
}

func jsonKind(goKind string) string {
	switch goKind {
	case "int64", "int", "float64":
		return "a number"
	case "bool":
		return "a boolean"
	case "string":
		return "a string"
	case "slice":
		return "an array"
	case "struct", "map", "ptr":
		return "an object"
	}
	return goKind
}
