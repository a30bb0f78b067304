package disk

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/ctxio"
)

// stagePrefix names staging files in root/tmp (Open removes every file
// there, staging files included: they belong to a process that is gone).
const stagePrefix = "stage-"

// staging is the state of one file handed out by Stage.
type staging struct {
	path      string // its name in root/tmp until committed
	committed bool   // renamed into the blob tree: the tier's now
}

// Stage returns a new, empty, private (0600) staging file in the tier's
// temporary directory, open for reading and writing, for a writer that
// produces a blob in place, at any offsets and with holes (an ext4 image
// written by a filesystem writer that seeks back): CommitStaged then makes
// its content a blob without copying it. The file is the caller's until
// it calls CommitStaged or DiscardStaged; DiscardStaged must be called in
// the end in every case (it closes the file). A crash leaves the file in
// the temporary directory, where the next Open removes it, so a blob is
// never visible partly written. Errors wrap blob.ErrUnavailable after
// Close, the context's error, or the I/O error (ENOSPC when the index
// reserve is gone, see IndexReserve).
func (t *Tier) Stage(ctx context.Context) (*os.File, error) {
	if t.closing.Load() {
		return nil, t.errClosed()
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("disk %q: stage: %w", t.cfg.Name, err)
	}
	if err := t.checkRoom(); err != nil {
		return nil, fmt.Errorf("disk %q: stage: %w", t.cfg.Name, err)
	}
	f, err := os.CreateTemp(t.tmpDir, stagePrefix+"*")
	if err != nil {
		return nil, fmt.Errorf("disk %q: stage: %w", t.cfg.Name, err)
	}
	t.stageMu.Lock()
	if t.staged == nil {
		t.staged = make(map[*os.File]*staging)
	}
	t.staged[f] = &staging{path: f.Name()}
	t.stageMu.Unlock()
	return f, nil
}

// errNotStaged is returned for a file Stage did not hand out (or one
// already discarded).
var errNotStaged = errors.New("not a staging file of this tier")

func (t *Tier) stagingOf(f *os.File) (*staging, error) {
	t.stageMu.Lock()
	defer t.stageMu.Unlock()
	st, ok := t.staged[f]
	if !ok {
		return nil, fmt.Errorf("disk %q: %w", t.cfg.Name, errNotStaged)
	}
	return st, nil
}

// CommitStaged makes the content of the staging file f (from offset 0 to
// its size; holes read as zeros and stay holes) the blob of its digest:
// it hashes the file, makes it read-only (0400) and renames it into the
// blob tree (index row), so the blob appears all or nothing. The digest
// is the content's own, so there is nothing to mismatch; the caller must
// not write to f once it calls CommitStaged. It returns the blob's Info.
// Like a Put's, the file is flushed to disk by the background syncer, not
// on the commit's path (see the package doc, Guarantees): OpenBlobFile and
// Close wait for it, and a caller that hands out a link of f itself
// fsyncs f first if the link must survive a power loss.
//
// Once committed, the file is never written again: the tier replaces a
// blob only by renaming another file over its name and removes it only by
// unlinking it. A hard link of f made before or after the commit is
// therefore a read-only handout of the blob's bytes that eviction never
// changes (eviction unlinks the tier's name; the usage counters drop then,
// although the disk space returns only when the last link goes).
//
// If the tier already holds the digest, that copy stays and f remains a
// staging file (removed by DiscardStaged). If the content is larger than
// Config.MaxBlob the error wraps blob.ErrTooLarge and f remains a
// staging file the caller may still read, link or copy. f stays open
// either way until DiscardStaged.
func (t *Tier) CommitStaged(ctx context.Context, f *os.File) (blob.Info, error) {
	st, err := t.stagingOf(f)
	if err != nil {
		return blob.Info{}, err
	}
	t.stageMu.Lock()
	committed := st.committed
	t.stageMu.Unlock()
	if committed {
		return blob.Info{}, fmt.Errorf("disk %q: commit: already committed", t.cfg.Name)
	}
	if t.closing.Load() {
		return blob.Info{}, t.errClosed()
	}
	fail := func(err error) (blob.Info, error) {
		return blob.Info{}, fmt.Errorf("disk %q: commit staged blob: %w", t.cfg.Name, err)
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	fi, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	size := fi.Size()
	if t.cfg.MaxBlob > 0 && size > t.cfg.MaxBlob {
		return fail(fmt.Errorf("%w: %d bytes exceeds %d", blob.ErrTooLarge, size, t.cfg.MaxBlob))
	}
	// Hashed from the page cache. The file reaches the disk as a Put's
	// does: the background syncer fsyncs it after the commit (OpenBlobFile
	// and Close wait for that, see durable). A tier that cannot defer
	// fsyncs it here, while hashing.
	durable := !t.dur.async
	synced := make(chan error, 1)
	if durable {
		go func() { synced <- fsyncFile(f, st.path) }()
	} else {
		synced <- nil
	}
	h := sha256.New()
	bp := bufPool.Get().(*[]byte)
	_, herr := io.CopyBuffer(h, ctxio.NewReader[blob.Digest](ctx, io.NewSectionReader(f, 0, size)), *bp)
	bufPool.Put(bp)
	if serr := <-synced; serr != nil {
		return fail(serr)
	}
	if herr != nil {
		return fail(herr)
	}
	d := blob.NewDigestFromHash(h)
	hex := d.Encoded()
	if err := f.Chmod(0o400); err != nil {
		return fail(err)
	}
	info := t.info(d, row{size: size, atime: t.now()})
	if cur, found, err := t.lookup(hex); err != nil {
		return fail(err)
	} else if found && cur.size == size {
		if fi, err := os.Lstat(t.path(hex)); err == nil && fi.Mode().IsRegular() && fi.Size() == size {
			t.touch(hex, row{size: size, atime: t.now()})
			return info, nil // the tier's copy stays; f stays staged
		}
	}
	if err := t.checkRoom(); err != nil {
		return fail(err)
	}
	t.stageMu.Lock()
	st.committed = true // from here on, never removed by DiscardStaged
	t.stageMu.Unlock()
	if err := t.commit(hex, st.path, size, durable); err != nil {
		// commit failed before or at the rename: the file is still at
		// st.path, or was renamed into place without a row (invisible,
		// adopted or overwritten later): either way not the caller's to
		// remove by name any more unless it is still staged.
		if _, serr := os.Lstat(st.path); serr == nil {
			t.stageMu.Lock()
			st.committed = false
			t.stageMu.Unlock()
		}
		return fail(err)
	}
	t.maybeEvict()
	return info, nil
}

// DiscardStaged closes the staging file f and removes it unless
// CommitStaged made it a blob. Readers of f's content through other
// descriptors or hard links keep it. It is idempotent, works after Close
// and returns the error of removing the file, if any.
func (t *Tier) DiscardStaged(f *os.File) error {
	t.stageMu.Lock()
	st, ok := t.staged[f]
	delete(t.staged, f)
	t.stageMu.Unlock()
	if !ok {
		return nil
	}
	f.Close()
	if st.committed {
		return nil
	}
	if err := os.Remove(st.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("disk %q: discard staged blob: %w", t.cfg.Name, err)
	}
	return nil
}

// OpenBlobFile opens the file of blob d read-only, for a caller that hands
// the blob out as a hard link of that very file (linking the descriptor)
// instead of copying it, and returns it with the blob's Info. The file is
// the blob as committed and the tier never writes it; it is on disk
// (fsynced) before it is returned, so a link of it survives a power loss.
// After a machine crash with the tier open (see the package doc,
// Guarantees) the tier hashes the file before it first hands it out, and
// drops an entry whose file was torn. It may still have rotted on disk
// since: the caller must hash it before handing it out. A blob stored by
// Put (mode 0600) is made read-only (0400) first, as committed staged
// blobs are, so that a link of it is never writable. It counts as an
// access, like Open. The caller closes the file. Errors wrap
// blob.ErrNotFound for a blob the tier does not hold (or no longer holds
// intact).
func (t *Tier) OpenBlobFile(ctx context.Context, d blob.Digest) (*os.File, blob.Info, error) {
	f, hex, r, err := t.openFile(ctx, d)
	if err != nil {
		return nil, blob.Info{}, err
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != r.size {
		f.Close()
		return nil, blob.Info{}, fmt.Errorf("disk %q: open %s: %w: the file does not match its index row", t.cfg.Name, d, blob.ErrNotFound)
	}
	if err := t.readyForHandout(ctx, d, hex, f, r.size); err != nil {
		f.Close()
		return nil, blob.Info{}, err
	}
	if fi.Mode().Perm() != 0o400 {
		if err := f.Chmod(0o400); err != nil {
			f.Close()
			return nil, blob.Info{}, fmt.Errorf("disk %q: open %s: make it read-only: %w", t.cfg.Name, d, err)
		}
	}
	return f, t.info(d, r), nil
}
