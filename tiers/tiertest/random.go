package tiertest

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"

	"github.com/strata-oci/strata/blob"
)

// digestCache remembers RandomBlob digests so a large blob is hashed once
// per process.
var digestCache sync.Map // randomKey -> blob.Digest

type randomKey struct{ seed, size int64 }

func randomReader(seed, size int64) io.Reader {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], uint64(seed))
	copy(s[8:], "strata tiertest random blob")
	return &io.LimitedReader{R: rand.NewChaCha8(s), N: size}
}

// RandomBlob returns a reader that streams size pseudo-random bytes derived
// deterministically from seed, and their digest. It never holds the content
// in memory: the digest is computed by streaming it once (and remembered for
// later calls with the same seed and size). Each call returns a new reader
// positioned at the start. Blobs of one seed and different sizes share a
// prefix; use distinct seeds for distinct content. It panics if size is
// negative.
func RandomBlob(seed, size int64) (io.Reader, blob.Digest) {
	if size < 0 {
		panic(fmt.Sprintf("tiertest.RandomBlob: negative size %d", size))
	}
	k := randomKey{seed, size}
	if d, ok := digestCache.Load(k); ok {
		return randomReader(seed, size), d.(blob.Digest)
	}
	h := sha256.New()
	if _, err := io.Copy(h, randomReader(seed, size)); err != nil {
		panic(err) // cannot happen: the reader never fails
	}
	d := blob.NewDigestFromHash(h)
	digestCache.Store(k, d)
	return randomReader(seed, size), d
}

// RandomBytes returns the same content as RandomBlob(seed, size), in memory.
// Use it for small blobs.
func RandomBytes(seed int64, size int) ([]byte, blob.Digest) {
	b := make([]byte, size)
	if _, err := io.ReadFull(randomReader(seed, int64(size)), b); err != nil {
		panic(err) // cannot happen
	}
	return b, blob.FromBytes(b)
}
