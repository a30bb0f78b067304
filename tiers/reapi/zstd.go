package reapi

import (
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/strata-oci/strata/blob"
)

// maxZstdWindow bounds the window a server's zstd stream may ask for, so a
// hostile server cannot make a read allocate without limit. Standard
// encoders use at most 8 MiB below level 19 and 128 MiB with --long=27.
const maxZstdWindow = 128 << 20

// zstdReader decompresses a ByteStream read as it arrives (no read-ahead
// goroutines). A decoding failure is reported as content corruption (a
// *blob.MismatchError); a failure of the stream below keeps its own error.
type zstdReader struct {
	dec       *zstd.Decoder
	sr        *streamReader
	tier      string
	d         blob.Digest
	size      int64 // the blob's size
	base      int64 // blob offset the stream starts at (read_offset)
	n         int64 // bytes decoded
	onCorrupt func(error)
	err       error
}

// newZstdReader decompresses sr, a stream of d (size bytes) from offset
// base; onCorrupt is called once if the stream does not decode.
func newZstdReader(sr *streamReader, tier string, d blob.Digest, size, base int64, onCorrupt func(error)) (*zstdReader, error) {
	dec, err := zstd.NewReader(sr, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(maxZstdWindow))
	if err != nil {
		return nil, fmt.Errorf("reapi %q: read %s: zstd: %w", tier, d, err)
	}
	return &zstdReader{dec: dec, sr: sr, tier: tier, d: d, size: size, base: base, onCorrupt: onCorrupt}, nil
}

func (z *zstdReader) Read(p []byte) (int, error) {
	if z.err != nil {
		return 0, z.err
	}
	n, err := z.dec.Read(p)
	z.n += int64(n)
	if err != nil && err != io.EOF {
		if z.sr.err != nil && z.sr.err != io.EOF {
			err = z.sr.err
		} else {
			me := &blob.MismatchError{Want: z.d, WantSize: z.size, GotSize: z.base + z.n}
			err = fmt.Errorf("reapi %q: read %s: server sent a corrupt zstd stream (%v): %w", z.tier, z.d, err, me)
			z.onCorrupt(err)
		}
		z.err = err
	}
	return n, err
}

func (z *zstdReader) close() { z.dec.Close() }

// encoders pools stream encoders; an encoder holds megabytes of tables.
var encoders = sync.Pool{New: func() any {
	e, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		panic(err) // only on invalid options, which are constant here
	}
	return e
}}

// batchEncoder compresses whole small blobs; EncodeAll is safe for
// concurrent use.
var batchEncoder = sync.OnceValue(func() *zstd.Encoder {
	e, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		panic(err)
	}
	return e
})
