package ext4

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/safego"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// TestMaterializeExtremeDeclaredSizes: a layer whose declared size is
// 2^63-1 (or otherwise wrong) fails Materialize with a mismatch: no panic
// on the read-ahead goroutine, no recovered panic either, nothing stored.
func TestMaterializeExtremeDeclaredSizes(t *testing.T) {
	for _, tc := range tartest.WrongSizes() {
		t.Run(tc.Name, func(t *testing.T) {
			store := bigStore()
			c := newConverter(t, store)
			img := sampleImage()
			img.layers = append(img.layers, tc.Layer)
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
