package tartest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/ctxio"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/internal/layerio"
)

// MediaTypeOf guesses a layer blob's OCI media type from its first bytes:
// gzip and zstd magic numbers, otherwise an uncompressed tar.
func MediaTypeOf(blobBytes []byte) types.MediaType {
	switch {
	case bytes.HasPrefix(blobBytes, []byte{0x1f, 0x8b}):
		return types.OCILayer
	case bytes.HasPrefix(blobBytes, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return types.OCILayerZStd
	}
	return types.OCIUncompressedLayer
}

// layer is an in-memory v1.Layer over a blob with an explicit media type.
type layer struct {
	blob      []byte
	mediaType types.MediaType
	digest    v1.Hash
	diffID    v1.Hash
}

// NewLayer returns an in-memory v1.Layer whose blob (as stored, compressed
// or not) is b and whose media type is mediaType (any spelling manifest.Compression
// accepts, Docker ones included).
func NewLayer(b []byte, mediaType types.MediaType) (v1.Layer, error) {
	l := &layer{blob: b, mediaType: mediaType}
	var err error
	if l.digest, err = v1.NewHash(string(blob.FromBytes(b))); err != nil {
		return nil, err
	}
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		return nil, fmt.Errorf("tartest: decompress layer: %w", err)
	}
	l.diffID = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
	return l, nil
}

func (l *layer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *layer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *layer) Size() (int64, error)                { return int64(len(l.blob)), nil }
func (l *layer) MediaType() (types.MediaType, error) { return l.mediaType, nil }
func (l *layer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.blob)), nil
}
func (l *layer) Uncompressed() (io.ReadCloser, error) {
	c, err := manifest.Compression(l.mediaType)
	if err != nil {
		return nil, err
	}
	return layerio.Decompress(bytes.NewReader(l.blob), c, layerio.Limits{MaxBytes: -1})
}

// Image returns an OCI image whose layers, bottom first, are the given
// blobs, with media types from MediaTypeOf.
func Image(t testing.TB, layers ...[]byte) v1.Image {
	t.Helper()
	ls := make([]v1.Layer, 0, len(layers))
	for i, b := range layers {
		l, err := NewLayer(b, MediaTypeOf(b))
		if err != nil {
			t.Fatalf("tartest: layer %d: %v", i, err)
		}
		ls = append(ls, l)
	}
	return ImageOf(t, ls...)
}

// ImageOf returns an OCI image with the given layers, bottom first.
func ImageOf(t testing.TB, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatalf("tartest: append layers: %v", err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	if _, err := img.Digest(); err != nil {
		t.Fatalf("tartest: image digest: %v", err)
	}
	return img
}

// FromV1 adapts a go-containerregistry image to manifest.Image. Each
// Layer.Open returns the layer's blob as stored, verified against its digest
// and size with blob.NewVerifier while it is read, and failing reads once
// ctx is done.
func FromV1(t testing.TB, img v1.Image) manifest.Image {
	t.Helper()
	m, err := Adapt(img)
	if err != nil {
		t.Fatalf("tartest: %v", err)
	}
	return m
}

// Adapt is FromV1 returning its error instead of failing a test.
func Adapt(img v1.Image) (manifest.Image, error) {
	d, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("image digest: %w", err)
	}
	ls, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("image layers: %w", err)
	}
	out := &v1Image{digest: blob.Digest(d.String())}
	for i, l := range ls {
		ld, err := l.Digest()
		if err != nil {
			return nil, fmt.Errorf("layer %d digest: %w", i, err)
		}
		size, err := l.Size()
		if err != nil {
			return nil, fmt.Errorf("layer %d size: %w", i, err)
		}
		mt, err := l.MediaType()
		if err != nil {
			return nil, fmt.Errorf("layer %d media type: %w", i, err)
		}
		out.layers = append(out.layers, &v1Layer{l: l, digest: blob.Digest(ld.String()), size: size, mediaType: mt})
	}
	return out, nil
}

type v1Image struct {
	digest blob.Digest
	layers []manifest.Layer
}

func (i *v1Image) Digest() blob.Digest      { return i.digest }
func (i *v1Image) Layers() []manifest.Layer { return i.layers }

// Origin is one name for every test image: they hold their bytes.
func (i *v1Image) Origin() string  { return "tartest" }
func (i *v1Image) LocalOnly() bool { return false }

type v1Layer struct {
	l         v1.Layer
	digest    blob.Digest
	size      int64
	mediaType types.MediaType
}

func (l *v1Layer) Digest() blob.Digest        { return l.digest }
func (l *v1Layer) MediaType() types.MediaType { return l.mediaType }
func (l *v1Layer) Size() int64                { return l.size }

// Authorize: the test holds the layer's bytes.
func (l *v1Layer) Authorize(context.Context) error { return nil }
func (l *v1Layer) Open(ctx context.Context) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rc, err := l.l.Compressed()
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", l.digest, err)
	}
	return blob.NewVerifier(ctxReadCloser(ctx, rc), l.digest, l.size, nil), nil
}

// ctxReadCloser reads rc until ctx is done; closing it closes rc.
func ctxReadCloser(ctx context.Context, rc io.ReadCloser) io.ReadCloser {
	return struct {
		io.Reader
		io.Closer
	}{ctxio.NewReader[blob.Digest](ctx, rc), rc}
}

// RawLayer returns a manifest.Layer over blob b with the given media type
// and no checks at all (it may be corrupt or mislabelled): for testing how
// materializers handle bad layers. Open verifies against b's digest, so
// reads succeed.
func RawLayer(b []byte, mediaType types.MediaType) manifest.Layer {
	return &rawLayer{b: b, mediaType: mediaType, digest: blob.FromBytes(b)}
}

// RawImage returns a manifest.Image of the given layers, bottom first,
// whose digest is derived from the layer digests.
func RawImage(layers ...manifest.Layer) manifest.Image {
	var s strings.Builder
	for _, l := range layers {
		s.WriteString(string(l.Digest()))
	}
	return &v1Image{digest: blob.FromBytes([]byte(s.String())), layers: layers}
}

type rawLayer struct {
	b         []byte
	mediaType types.MediaType
	digest    blob.Digest
}

func (l *rawLayer) Digest() blob.Digest        { return l.digest }
func (l *rawLayer) MediaType() types.MediaType { return l.mediaType }
func (l *rawLayer) Size() int64                { return int64(len(l.b)) }

// Authorize: the test holds the layer's bytes.
func (l *rawLayer) Authorize(context.Context) error { return nil }
func (l *rawLayer) Open(ctx context.Context) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return blob.NewVerifier(ctxReadCloser(ctx, io.NopCloser(bytes.NewReader(l.b))), l.digest, int64(len(l.b)), nil), nil
}

// DeclaredLayer returns a layer over blob b with media type mt that
// declares size for it (a manifest may lie) and, like the fetcher's
// layers, verifies what Open yields against that size.
func DeclaredLayer(b []byte, mt types.MediaType, size int64) manifest.Layer {
	return declaredLayer{b: b, mt: mt, size: size}
}

type declaredLayer struct {
	b    []byte
	mt   types.MediaType
	size int64
}

func (l declaredLayer) Digest() blob.Digest             { return blob.FromBytes(l.b) }
func (l declaredLayer) Authorize(context.Context) error { return nil }
func (l declaredLayer) MediaType() types.MediaType      { return l.mt }
func (l declaredLayer) Size() int64                     { return l.size }
func (l declaredLayer) Open(context.Context) (io.ReadCloser, error) {
	return blob.NewVerifier(bytes.NewReader(l.b), l.Digest(), l.size, nil), nil
}

// SizeCase is a layer whose declared size is wrong, and a name for it.
type SizeCase struct {
	Name  string
	Layer manifest.Layer
}

// WrongSizes returns one small tar layer, uncompressed, gzip and zstd,
// each declaring sizes from 2^63-1 down to zero but never its own: every
// read of one must end in a mismatch.
func WrongSizes() []SizeCase {
	tb := New().File("etc/hostname", []byte("box\n")).Tar()
	blobs := []struct {
		name string
		b    []byte
		mt   types.MediaType
	}{
		{"uncompressed", tb, types.OCIUncompressedLayer},
		{"gzip", GzipBytes(tb), types.OCILayer},
		{"zstd", ZstdBytes(tb), types.OCILayerZStd},
	}
	sizes := []struct {
		desc string
		size func(n int64) int64
	}{
		{"2^63-1", func(int64) int64 { return math.MaxInt64 }},
		{"2^63-2", func(int64) int64 { return math.MaxInt64 - 1 }},
		{"1 TiB", func(int64) int64 { return 1 << 40 }},
		{"one byte short", func(n int64) int64 { return n - 1 }},
		{"zero", func(int64) int64 { return 0 }},
	}
	var out []SizeCase
	for _, b := range blobs {
		for _, s := range sizes {
			out = append(out, SizeCase{Name: b.name + ", " + s.desc, Layer: DeclaredLayer(b.b, b.mt, s.size(int64(len(b.b))))})
		}
	}
	return out
}
