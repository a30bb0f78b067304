package overlay

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/safego"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// declaredLayer declares size for its blob (a manifest may lie) and, like
// the fetcher's layers, verifies what Open yields against that size.
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

// TestMaterializeExtremeDeclaredSizes: a layer whose declared size is
// 2^63-1 (or otherwise wrong) fails Materialize with a mismatch, without a
// panic on the extraction goroutines (nor a recovered one), and leaves no
// lease and no temp directory.
func TestMaterializeExtremeDeclaredSizes(t *testing.T) {
	tb := tartest.New().File("etc/hostname", []byte("box\n")).Tar()
	blobs := []struct {
		name string
		b    []byte
		mt   types.MediaType
	}{
		{"uncompressed", tb, types.OCIUncompressedLayer},
		{"gzip", tartest.GzipBytes(tb), types.OCILayer},
		{"zstd", tartest.ZstdBytes(tb), types.OCILayerZStd},
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
	good := tartest.New().File("ok", []byte("ok")).Gzip()
	for _, b := range blobs {
		for _, s := range sizes {
			t.Run(b.name+", "+s.desc, func(t *testing.T) {
				m := newMaterializer(t, Config{})
				img := tartest.RawImage(
					tartest.RawLayer(good, types.OCILayer),
					declaredLayer{b: b.b, mt: b.mt, size: s.size(int64(len(b.b)))},
				)
				_, err := m.Materialize(context.Background(), img)
				if !errors.Is(err, blob.ErrMismatch) {
					t.Fatalf("err = %v, want a mismatch", err)
				}
				if errors.Is(err, safego.ErrPanic) {
					t.Fatalf("a panic was recovered: %v", err)
				}
				if u := m.Usage(); u.Leased != 0 {
					t.Fatalf("leases left after failure: %+v", u)
				}
				m.running.Wait()
				if es, _ := os.ReadDir(filepath.Join(m.root, "tmp")); len(es) != 0 {
					t.Fatalf("temp dirs left after failure: %d", len(es))
				}
			})
		}
	}
}

var _ manifest.Layer = declaredLayer{}
