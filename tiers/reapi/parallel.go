package reapi

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/readahead"
)

// newParallelReader returns the reader of d (size bytes) in parts of
// Parallel.PartSize bytes, each read with its own ranged identity
// ByteStream Read (see ParallelConfig and package readahead), whose first
// part is read by first, a ranged resumingReader already open at offset
// 0. It starts reading ahead at once, within the tier's read-ahead budget.
func (t *Tier) newParallelReader(ctx context.Context, d blob.Digest, size int64, first *resumingReader, onCorrupt func(error)) *readahead.Reader {
	open := func(ctx context.Context, off, end int64) (io.ReadCloser, error) {
		rr := &resumingReader{t: t, ctx: ctx, d: d, size: size, onCorrupt: onCorrupt, ranged: true, off: off, end: end}
		if err := rr.open(); err != nil {
			if errors.Is(err, blob.ErrNotFound) {
				// Evicted mid-read: the read fails like a broken stream.
				t.forget(d)
				err = fmt.Errorf("reapi %q: read %s: %w: the blob vanished at byte %d (%v)",
					t.cfg.Name, d, blob.ErrUnavailable, off, err)
			}
			return nil, err
		}
		return rangedStream{rr}, nil
	}
	return readahead.New(ctx, readahead.Config{
		Size:     size,
		PartSize: t.cfg.Parallel.PartSize,
		Streams:  t.cfg.Parallel.Streams,
		Budget:   t.readAhead,
		Open:     open,
		Takeover: func() { t.resumes.Add(1) },
		Closed:   errReaderClosed,
	}, rangedStream{first})
}

// rangedStream is a resumingReader as an io.ReadCloser.
type rangedStream struct{ *resumingReader }

func (s rangedStream) Close() error {
	s.close()
	return nil
}
