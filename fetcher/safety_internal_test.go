package fetcher

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers/memory"
)

// TestReadSmallBounds: a document is read whole into memory, so readSmall
// reads no more than maxDocumentSize bytes whatever size it is told,
// including an unknown (negative) one.
func TestReadSmallBounds(t *testing.T) {
	ctx := context.Background()
	mem := memory.New(memory.Config{Name: "memory", Budget: 64 << 20, MaxBlob: 32 << 20})
	t.Cleanup(func() { mem.Close() })
	big := bytes.Repeat([]byte("d"), maxDocumentSize+1)
	bd := blob.FromBytes(big)
	if err := mem.Put(ctx, bd, int64(len(big)), bytes.NewReader(big)); err != nil {
		t.Fatal(err)
	}
	small := []byte(`{"small":true}`)
	sd := blob.FromBytes(small)
	if err := mem.Put(ctx, sd, int64(len(small)), bytes.NewReader(small)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		desc    string
		d       blob.Digest
		size    int64
		wantErr error
	}{
		{desc: "declared above the cap", d: bd, size: int64(len(big)), wantErr: blob.ErrTooLarge},
		{desc: "declared 2^63-1", d: sd, size: 1<<63 - 1, wantErr: blob.ErrTooLarge},
		{desc: "unknown size, blob above the cap", d: bd, size: -1, wantErr: blob.ErrTooLarge},
		{desc: "unknown size, small blob", d: sd, size: -1},
		{desc: "right size", d: sd, size: int64(len(small))},
		{desc: "wrong size", d: sd, size: 3, wantErr: blob.ErrMismatch},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			data, _, err := readSmall(tc.d, tc.size, func() (io.ReadCloser, blob.Info, error) { return mem.Open(ctx, tc.d) })
			if tc.wantErr == nil {
				if err != nil || !bytes.Equal(data, small) {
					t.Fatalf("got %d bytes, %v", len(data), err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
		})
	}
}
