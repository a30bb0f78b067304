package ext4

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/safego"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// sizedLayer declares size for its blob (a manifest may lie) and, like the
// fetcher's layers, verifies what Open yields against that size.
type sizedLayer struct {
	data []byte
	mt   types.MediaType
	size int64
}

func (l *sizedLayer) Digest() blob.Digest             { return blob.FromBytes(l.data) }
func (l *sizedLayer) Authorize(context.Context) error { return nil }
func (l *sizedLayer) MediaType() types.MediaType      { return l.mt }
func (l *sizedLayer) Size() int64                     { return l.size }
func (l *sizedLayer) Open(context.Context) (io.ReadCloser, error) {
	return blob.NewVerifier(bytes.NewReader(l.data), l.Digest(), l.size, nil), nil
}

// TestMaterializeExtremeDeclaredSizes: a layer whose declared size is
// 2^63-1 (or otherwise wrong) fails Materialize with a mismatch: no panic
// on the read-ahead goroutine, no recovered panic either, nothing stored.
func TestMaterializeExtremeDeclaredSizes(t *testing.T) {
	tb := tartest.New().File("etc/hostname", []byte("box\n")).Tar()
	blobs := []struct {
		name string
		data []byte
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
	for _, b := range blobs {
		for _, s := range sizes {
			t.Run(b.name+", "+s.desc, func(t *testing.T) {
				store := bigStore()
				c := newConverter(t, store)
				img := sampleImage()
				img.layers = append(img.layers, &sizedLayer{data: b.data, mt: b.mt, size: s.size(int64(len(b.data)))})
				_, err := c.Materialize(context.Background(), img, nil)
				if !errors.Is(err, blob.ErrMismatch) {
					t.Fatalf("err = %v, want a mismatch", err)
				}
				if errors.Is(err, safego.ErrPanic) {
					t.Fatalf("a panic was recovered: %v", err)
				}
				if n := countBlobs(t, store); n != 0 {
					t.Errorf("%d blobs stored", n)
				}
			})
		}
	}
}

// TestReadaheadRecoversPanics: a panic opening or reading a layer on the
// read-ahead goroutine reaches the consumer as an error wrapping
// safego.ErrPanic, after the chunks produced before it.
func TestReadaheadRecoversPanics(t *testing.T) {
	data := tartest.Content("p", readaheadChunk+100)
	tests := []struct {
		desc string
		open func(context.Context) (io.ReadCloser, error)
		want int
	}{
		{
			desc: "open panics",
			open: func(context.Context) (io.ReadCloser, error) { panic("open: bug") },
		},
		{
			desc: "read panics after a chunk",
			open: func(context.Context) (io.ReadCloser, error) {
				return io.NopCloser(io.MultiReader(bytes.NewReader(data), panicReader{})), nil
			},
			want: readaheadChunk, // the partial chunk in progress is lost with the panic
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			r := startReadahead(context.Background(), tc.open)
			defer r.Close()
			n, err := io.Copy(io.Discard, r)
			if !errors.Is(err, safego.ErrPanic) || n != int64(tc.want) {
				t.Fatalf("read %d bytes, err %v; want %d bytes then an ErrPanic error", n, err, tc.want)
			}
		})
	}
}

type panicReader struct{}

func (panicReader) Read(p []byte) (int, error) {
	var m map[int]int
	m[len(p)]++ // a bug
	return 0, nil
}
