package layerio_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/materialize/internal/layerio"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// TestOpenSettlesBadHeader: a gzip header that does not parse fails Open
// itself, before a consumer holds a stream it could Settle. Open reads the
// rest of the blob to tell a rotten cached copy (a *blob.MismatchError, so
// the materializer reads the layer again) from a layer that really is
// broken (the decompression error, which it remembers as invalid).
func TestOpenSettlesBadHeader(t *testing.T) {
	gz := tartest.New().File("a", tartest.Content("a", 200_000)).Gzip()
	flipped := append([]byte(nil), gz...)
	flipped[0] ^= 0xff
	for _, tc := range []struct {
		desc     string
		layer    fakeLayer
		mismatch bool
	}{
		{"corrupt copy: first byte flipped", fakeLayer{b: flipped, digest: blob.FromBytes(gz), mediaType: types.OCILayer}, true},
		{"a layer that is not gzip", layerOf(flipped, types.OCILayer), false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			rc, err := layerio.Open(context.Background(), tc.layer, layerio.Limits{})
			if err == nil {
				rc.Close()
				t.Fatal("Open of a blob with a bad gzip header succeeded")
			}
			var me *blob.MismatchError
			if got := errors.As(err, &me); got != tc.mismatch {
				t.Fatalf("Open = %v; a *blob.MismatchError: %v, want %v", err, got, tc.mismatch)
			}
		})
	}
}
