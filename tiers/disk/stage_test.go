package disk

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/strata-oci/strata/blob"
)

// stageContent writes data into a fresh staging file out of order (the
// second half first, as a filesystem writer that seeks back does), leaving
// a hole of hole bytes before it, and returns the file and the logical
// content.
func stageContent(t *testing.T, tr *Tier, data []byte, hole int64) (*os.File, []byte) {
	t.Helper()
	f, err := tr.Stage(context.Background())
	if err != nil {
		t.Fatalf("Stage: %v", err)
	}
	t.Cleanup(func() { tr.DiscardStaged(f) })
	half := len(data) / 2
	if _, err := f.WriteAt(data[half:], hole+int64(half)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data[:half], hole); err != nil {
		t.Fatal(err)
	}
	want := append(make([]byte, hole), data...)
	return f, want
}

func allocatedBytes(t *testing.T, p string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestCommitStagedMakesABlob: a file written in place, out of order and
// with a hole, becomes the blob of its content's digest: readable through
// Open, counted in Usage, read-only, still sparse, and the tmp directory
// is empty again.
func TestCommitStagedMakesABlob(t *testing.T) {
	tr := openTier(t, Config{})
	ctx := context.Background()
	f, want := stageContent(t, tr, randomBytes(1, 300<<10), 8<<20)
	info, err := tr.CommitStaged(ctx, f)
	if err != nil {
		t.Fatalf("CommitStaged: %v", err)
	}
	if info.Digest != blob.FromBytes(want) || info.Size != int64(len(want)) {
		t.Fatalf("CommitStaged = %s/%d, want %s/%d", info.Digest, info.Size, blob.FromBytes(want), len(want))
	}
	mustRead(t, tr, info.Digest, want)
	if u := usage(t, tr); u.Blobs != 1 || u.Bytes != int64(len(want)) {
		t.Fatalf("usage %+v, want 1 blob of %d bytes", u, len(want))
	}
	p := tr.path(info.Digest.Encoded())
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o400 {
		t.Errorf("committed blob file mode %v, want 0400 (never written again)", fi.Mode().Perm())
	}
	if a := allocatedBytes(t, p); a >= 4<<20 {
		t.Errorf("committed blob takes %d bytes of disk for %d of data: the hole was filled", a, 300<<10)
	}
	if err := tr.DiscardStaged(f); err != nil {
		t.Fatal(err)
	}
	if ents := dirEntries(t, filepath.Join(tr.Root(), "tmp")); len(ents) != 0 {
		t.Fatalf("tmp holds %v after a commit", ents)
	}
	mustRead(t, tr, info.Digest, want) // discarding a committed file keeps the blob
}

// TestStagedOutcomes: what stays visible and what stays on disk for each
// way a staging file ends.
func TestStagedOutcomes(t *testing.T) {
	data := randomBytes(2, 200<<10)
	d := blob.FromBytes(data)
	for _, tc := range []struct {
		name      string
		cfg       Config
		prePut    bool // the tier holds the digest already
		commit    bool
		wantErr   error
		wantBlobs int64
	}{
		{name: "discarded without commit: nothing visible", wantBlobs: 0},
		{name: "committed", commit: true, wantBlobs: 1},
		{name: "duplicate of a held blob: counted once", prePut: true, commit: true, wantBlobs: 1},
		{name: "larger than MaxBlob: declined, still readable", cfg: Config{MaxBlob: 100 << 10}, commit: true, wantErr: blob.ErrTooLarge, wantBlobs: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := openTier(t, tc.cfg)
			ctx := context.Background()
			if tc.prePut {
				put(t, tr, data)
			}
			f, err := tr.Stage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(data); err != nil {
				t.Fatal(err)
			}
			if tc.commit {
				_, err := tr.CommitStaged(ctx, f)
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("CommitStaged: %v, want %v", err, tc.wantErr)
				}
				// The staged content stays readable through f until discarded.
				got := make([]byte, len(data))
				if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
					t.Fatalf("reading the staged file after CommitStaged: %v", err)
				}
			}
			if err := tr.DiscardStaged(f); err != nil {
				t.Fatal(err)
			}
			if err := tr.DiscardStaged(f); err != nil {
				t.Fatalf("second DiscardStaged: %v", err)
			}
			if u := usage(t, tr); u.Blobs != tc.wantBlobs {
				t.Fatalf("usage %+v, want %d blobs", u, tc.wantBlobs)
			}
			if tc.wantBlobs == 0 {
				requireMiss(t, tr, d)
			} else {
				mustRead(t, tr, d, data)
			}
			if ents := dirEntries(t, filepath.Join(tr.Root(), "tmp")); len(ents) != 0 {
				t.Fatalf("tmp holds %v", ents)
			}
		})
	}
}

// TestStagedLeftoverRemovedAtOpen: a staging file of a process that died
// before committing is removed by the next Open and never becomes a blob.
func TestStagedLeftoverRemovedAtOpen(t *testing.T) {
	root := t.TempDir()
	tr, err := Open(Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	f, err := tr.Stage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(randomBytes(3, 64<<10)); err != nil {
		t.Fatal(err)
	}
	f.Close() // the process dies: neither CommitStaged nor DiscardStaged
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	tr = openTier(t, Config{Root: root})
	if rs := tr.Reconciled(); rs.TempRemoved != 1 {
		t.Fatalf("Reconciled = %+v, want the staging file removed", rs)
	}
	if u := usage(t, tr); u.Blobs != 0 {
		t.Fatalf("usage %+v after a crash mid-staging", u)
	}
	if ents := dirEntries(t, filepath.Join(root, "tmp")); len(ents) != 0 {
		t.Fatalf("tmp holds %v", ents)
	}
}

// TestHandoutLinkSurvivesEviction: a hard link of a committed blob keeps
// its bytes when the tier evicts the blob (whose usage is then 0), and
// when a later Put of the same digest stores a new file in its place.
func TestHandoutLinkSurvivesEviction(t *testing.T) {
	tr := openTier(t, Config{})
	ctx := context.Background()
	data := randomBytes(4, 256<<10)
	f, err := tr.Stage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.DiscardStaged(f)
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	handout := filepath.Join(t.TempDir(), "handout")
	if err := os.Link(f.Name(), handout); err != nil {
		t.Fatal(err)
	}
	info, err := tr.CommitStaged(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	if hi, err1 := os.Stat(handout); err1 != nil || hi.Mode().Perm() != 0o400 {
		t.Fatalf("handout %v, %v: want mode 0400", hi, err1)
	}
	if n, _, err := tr.EvictTo(ctx, 0); err != nil || n != 1 {
		t.Fatalf("EvictTo(0) = %d, %v", n, err)
	}
	if u := usage(t, tr); u.Blobs != 0 || u.Bytes != 0 {
		t.Fatalf("usage after evicting the linked blob: %+v", u)
	}
	requireMiss(t, tr, info.Digest)
	put(t, tr, data) // a new file under the same name
	if u := usage(t, tr); u.Blobs != 1 || u.Bytes != int64(len(data)) {
		t.Fatalf("usage after Put again: %+v", u)
	}
	got, err := os.ReadFile(handout)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("handout after eviction and Put: %v (content equal: %v)", err, bytes.Equal(got, data))
	}
	hi, _ := os.Stat(handout)
	if pi, _ := os.Stat(tr.path(info.Digest.Encoded())); os.SameFile(hi, pi) {
		t.Fatal("the new Put wrote into the handout's inode")
	}
}

// TestStageRefusals: a file Stage did not hand out, a second commit, and
// staging after Close are refused.
func TestStageRefusals(t *testing.T) {
	root := t.TempDir()
	tr, err := Open(Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	other, err := os.CreateTemp(t.TempDir(), "x")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := tr.CommitStaged(ctx, other); !errors.Is(err, errNotStaged) {
		t.Errorf("CommitStaged of a foreign file: %v", err)
	}
	f, err := tr.Stage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("x"))
	if _, err := tr.CommitStaged(ctx, f); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.CommitStaged(ctx, f); err == nil {
		t.Error("second CommitStaged succeeded")
	}
	g, err := tr.Stage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := tr.CommitStaged(cctx, g); !errors.Is(err, context.Canceled) {
		t.Errorf("CommitStaged with a cancelled context: %v", err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Stage(ctx); !errors.Is(err, blob.ErrUnavailable) {
		t.Errorf("Stage after Close: %v", err)
	}
	if _, err := tr.CommitStaged(ctx, g); !errors.Is(err, blob.ErrUnavailable) {
		t.Errorf("CommitStaged after Close: %v", err)
	}
	if err := tr.DiscardStaged(g); err != nil {
		t.Errorf("DiscardStaged after Close: %v", err)
	}
	tr.DiscardStaged(f)
	if ents := dirEntries(t, filepath.Join(root, "tmp")); len(ents) != 0 {
		t.Fatalf("tmp holds %v", ents)
	}
}

// TestOpenBlobFileMakesPutBlobsReadOnly: a blob stored by Put (0600) is
// read-only (0400) once OpenBlobFile has handed it out, so a hard link of
// it is never writable; its bytes are unchanged and reads still verify.
func TestOpenBlobFileMakesPutBlobsReadOnly(t *testing.T) {
	tr := openTier(t, Config{})
	ctx := context.Background()
	data := randomBytes(5, 300<<10)
	d := put(t, tr, data)
	fi, err := os.Stat(tr.path(d.Encoded()))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() == 0o400 {
		t.Fatalf("a Put blob is already 0400: the test shows nothing")
	}
	f, info, err := tr.OpenBlobFile(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if info.Digest != d || info.Size != int64(len(data)) {
		t.Fatalf("info %+v", info)
	}
	if hi, err := f.Stat(); err != nil || hi.Mode().Perm() != 0o400 {
		t.Fatalf("handed-out blob file %v, %v: want mode 0400", hi, err)
	}
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("handed-out blob file: %d bytes, %v; want the blob", len(got), err)
	}
	if got, err := readAll(tr, d); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Open after the handout: %d bytes, %v; want the blob", len(got), err)
	}
}
