package disk

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"testing"

	"github.com/strata-oci/strata/blob"
)

// TestPutExtremeDeclaredSizes: without a per-blob limit, a Put declaring
// far more than its stream holds (up to 2^63-1 bytes) fails with a
// mismatch, and leaves neither the blob nor a temp file behind.
func TestPutExtremeDeclaredSizes(t *testing.T) {
	ctx := context.Background()
	tr := openTier(t, Config{})
	data := randomBytes(5, 200<<10) // spans hole blocks and copy buffers
	d := blob.FromBytes(data)
	for _, size := range []int64{math.MaxInt64, math.MaxInt64 - 1, 1 << 40, int64(len(data)) + 1, int64(len(data)) - 1, 0} {
		err := tr.Put(ctx, d, size, bytes.NewReader(data))
		if !errors.Is(err, blob.ErrMismatch) {
			t.Errorf("Put declaring %d bytes of a %d-byte stream: %v, want a mismatch", size, len(data), err)
		}
		requireMiss(t, tr, d)
		if es, _ := os.ReadDir(tr.tmpDir); len(es) != 0 {
			t.Errorf("size %d: %d temp files left", size, len(es))
		}
	}
	put(t, tr, data) // and the right size still stores it
	mustRead(t, tr, d, data)
}
