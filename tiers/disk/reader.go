package disk

import (
	"context"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/strata-oci/strata/blob"
)

// reader streams one blob file through a blob.Verifier. It fails a Read
// once the Open context is done, and reports a mismatch to the tier, which
// drops the entry. Not safe for concurrent Reads.
type reader struct {
	t      *Tier
	d      blob.Digest
	f      *os.File
	v      *blob.Verifier
	ctxErr func() error // the Open context's Err
}

func newReader(ctx context.Context, t *Tier, d blob.Digest, f *os.File, size int64) *reader {
	hex := d.Encoded()
	return &reader{t: t, d: d, f: f, ctxErr: ctx.Err,
		v: blob.NewVerifier(f, d, size, func(err error) { t.dropCorrupt(hex, f, err) })}
}

// Read implements io.Reader; it returns io.EOF only after the whole blob
// verified.
func (r *reader) Read(p []byte) (int, error) {
	if err := r.ctxErr(); err != nil {
		return 0, fmt.Errorf("disk %q: read %s: %w", r.t.cfg.Name, r.d, err)
	}
	n, err := r.v.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("disk %q: read %s: %w", r.t.cfg.Name, r.d, err)
	}
	return n, err
}

// VerifiedBlob implements blob.VerifiedReader.
func (r *reader) VerifiedBlob() (blob.Digest, int64) { return r.v.VerifiedBlob() }

// PrefixState implements blob.PrefixHasher (Read passes the verifier's
// bytes through unchanged).
func (r *reader) PrefixState() (hash.Hash, int64) { return r.v.PrefixState() }

// WriteTo implements io.WriterTo so io.Copy streams in large chunks.
func (r *reader) WriteTo(w io.Writer) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
			if m < n {
				return total, io.ErrShortWrite
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// Close closes the file. It is safe to call more than once.
func (r *reader) Close() error {
	return r.v.Close()
}
