package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/ctxio"
)

// Verify re-hashes every blob and calls fn (if not nil) once per blob with
// its Info and nil, or the error that reading it gave: one wrapping
// blob.ErrMismatch for rotten content, blob.ErrNotFound for a missing file.
// With remove, such entries are dropped (a missing file's row is always
// forgotten). Verify returns only errors that stopped it (ctx, index).
// A pass that completes and leaves only good blobs ends the suspicion
// after a machine crash (see the package doc, Guarantees).
func (t *Tier) Verify(ctx context.Context, remove bool, fn func(info blob.Info, err error)) error {
	clean := true
	err := t.scanRows(ctx, func(hex string, r row) error {
		d := blob.Digest("sha256:" + hex)
		info := t.info(d, r)
		verr := t.verifyOne(ctx, d, hex, r.size, remove)
		if verr != nil && ctx.Err() != nil {
			return fmt.Errorf("disk %q: verify: %w", t.cfg.Name, ctx.Err())
		}
		clean = clean && verifyClean(verr, remove)
		if fn != nil {
			fn(info, verr)
		}
		return nil
	})
	t.verifyPassDone(err, clean)
	return err
}

func (t *Tier) verifyOne(ctx context.Context, d blob.Digest, hex string, size int64, remove bool) error {
	f, err := os.Open(t.path(hex))
	if errors.Is(err, fs.ErrNotExist) {
		t.dropIf(hex, func() bool {
			_, err := os.Lstat(t.path(hex))
			return errors.Is(err, fs.ErrNotExist)
		})
		return t.notFound(d)
	}
	if err != nil {
		return fmt.Errorf("disk %q: verify %s: %w", t.cfg.Name, d, err)
	}
	defer f.Close()
	var onMismatch func(error)
	if remove {
		onMismatch = func(err error) { t.dropCorrupt(hex, f, err) }
	}
	v := blob.NewVerifier(ctxio.NewReader[blob.Digest](ctx, f), d, size, onMismatch)
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{v}, *bp); err != nil {
		return fmt.Errorf("disk %q: verify %s: %w", t.cfg.Name, d, err)
	}
	return nil
}

// Forgotten returns the blobs whose index row Open forgot because the file
// was missing, was not a regular file or had the wrong size (or the row
// could not be read): blobs the tier had and lost. Verify cannot meet them
// any more, so a caller that reports on the tier's health reports these.
func (t *Tier) Forgotten() []blob.Digest {
	var out []blob.Digest
	for _, hex := range t.forgotten {
		if d := blob.Digest("sha256:" + hex); blob.ValidateDigest(d) == nil {
			out = append(out, d)
		}
	}
	return out
}
