package reapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"testing"

	"github.com/strata-oci/strata/blob"
)

// TestReaderIsAPrefixHasher: the reader Open returns verifies itself and
// tells the hash of the bytes it yielded (also over zstd), so a stack over
// the tier hashes them once.
func TestReaderIsAPrefixHasher(t *testing.T) {
	for _, v := range variants {
		t.Run(v.desc, func(t *testing.T) {
			tier := newTier(t, startFake(t, v.o), v.mod)
			data := randomBytes(9, 3<<20)
			d := put(t, tier, data)
			rc, _, err := tier.Open(context.Background(), d)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			if vd, vn := blob.VerifiedBlobOf(rc); vd != d || vn != int64(len(data)) {
				t.Fatalf("VerifiedBlobOf = %s, %d; want %s, %d", vd, vn, d, len(data))
			}
			for _, k := range []int64{0, 1, 1<<20 + 17} {
				if _, err := io.CopyN(io.Discard, rc, k-readSoFar(t, rc)); err != nil {
					t.Fatal(err)
				}
				h, n := blob.PrefixStateOf(rc)
				want := sha256.Sum256(data[:k])
				if h == nil || n != k || !bytes.Equal(h.Sum(nil), want[:]) {
					t.Fatalf("PrefixStateOf after %d bytes = %v, %d; want the hash of those bytes", k, h, n)
				}
			}
		})
	}
}

// readSoFar is how many bytes of rc were read (its prefix state's count).
func readSoFar(t *testing.T, rc io.Reader) int64 {
	t.Helper()
	h, n := blob.PrefixStateOf(rc)
	if h == nil {
		t.Fatal("no prefix state")
	}
	return n
}
