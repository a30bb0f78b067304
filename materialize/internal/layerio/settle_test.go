package layerio_test

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/materialize/internal/layerio"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// TestSettle: a consumer that stopped on an error asks whether the blob's
// bytes were right. Corrupt bytes (a cached copy that rotted) must come
// back as a mismatch, not as the layer's fault; a genuine error stands.
func TestSettle(t *testing.T) {
	noise := make([]byte, 600_000)
	rand.Read(noise)
	tarBytes := tartest.New().File("a", noise[:300_000]).File("b", noise[300_000:]).Tar()
	gz := tartest.GzipBytes(tarBytes)
	bad := append([]byte(nil), gz...)
	for i := len(bad) / 3; i < len(bad)/3+64; i++ {
		bad[i] ^= 0xff // the deflate stream breaks well before the blob ends
	}
	stopped := errors.New("consumer refused an entry")
	for _, tc := range []struct {
		desc      string
		layer     fakeLayer
		readahead bool
		stopAfter int // bytes the consumer reads before it gives up (-1: until an error)
		mismatch  bool
	}{
		{"corrupt copy, decompressor fails", fakeLayer{b: bad, digest: blob.FromBytes(gz), mediaType: types.OCILayer}, false, -1, true},
		{"corrupt copy behind readahead", fakeLayer{b: bad, digest: blob.FromBytes(gz), mediaType: types.OCILayer}, true, -1, true},
		{"right bytes, consumer refuses", layerOf(gz, types.OCILayer), false, 4096, false},
		{"right bytes behind readahead", layerOf(gz, types.OCILayer), true, 4096, false},
		{"uncompressed, right bytes", layerOf(tarBytes, types.OCIUncompressedLayer), true, 1000, false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			rc, err := layerio.Open(context.Background(), tc.layer, layerio.Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if tc.readahead {
				rc = layerio.Readahead(rc, 1024, 2)
			}
			cause := stopped
			if tc.stopAfter >= 0 {
				if _, err := io.CopyN(io.Discard, rc, int64(tc.stopAfter)); err != nil {
					t.Fatal(err)
				}
			} else {
				// Read as the materializers do: until the stream fails.
				_, cause = io.Copy(io.Discard, rc)
				if cause == nil {
					t.Fatal("the corrupt layer read to its end")
				}
			}
			got := layerio.Settle(rc, cause)
			if tc.mismatch {
				var me *blob.MismatchError
				if !errors.As(got, &me) {
					t.Fatalf("Settle = %v, want a *blob.MismatchError", got)
				}
			} else if got != cause {
				t.Fatalf("Settle = %v, want the consumer's own error %v", got, cause)
			}
			rc.Close() // a second Close is harmless
		})
	}
}
