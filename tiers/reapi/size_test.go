package reapi

import (
	"bytes"
	"context"
	"errors"
	"math"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers/tiertest"
)

// TestPutExtremeDeclaredSizes: a Put whose declared size is near the top of
// the int64 range must not be mistaken for a small blob (size plus the
// batch overhead wrapping negative) and buffered: it streams, fails with a
// mismatch when the source ends short, and the server commits nothing.
func TestPutExtremeDeclaredSizes(t *testing.T) {
	ctx := context.Background()
	content, d := tiertest.RandomBytes(11, 5000)
	for _, zstd := range []bool{false, true} {
		f := startFake(t, fakeOptions{zstd: zstd})
		tier := newTier(t, f, nil)
		for _, size := range []int64{math.MaxInt64, math.MaxInt64 - 1, math.MaxInt64 - batchOverhead, 1 << 40} {
			err := tier.Put(ctx, d, size, bytes.NewReader(content))
			if !errors.Is(err, blob.ErrMismatch) {
				t.Errorf("zstd %v: Put declaring %d bytes of a %d-byte stream: %v, want a mismatch", zstd, size, len(content), err)
			}
			if _, err := tier.Stat(ctx, d); !errors.Is(err, blob.ErrNotFound) {
				t.Errorf("zstd %v, size %d: Stat after a failed Put: %v", zstd, size, err)
			}
		}
	}
}
