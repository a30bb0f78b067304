package ext4

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/disk"
)

// heldCommit is a disk tier as Stager whose CommitStaged waits until
// release is closed (started is closed when the first one begins), or
// fails with fail.
type heldCommit struct {
	*disk.Tier
	started chan struct{}
	release chan struct{}
	fail    error
	commits int
}

func (h *heldCommit) CommitStaged(ctx context.Context, f *os.File) (blob.Info, error) {
	h.commits++
	if h.commits == 1 {
		close(h.started)
	}
	<-h.release
	if h.fail != nil {
		return blob.Info{}, h.fail
	}
	return h.Tier.CommitStaged(ctx, f)
}

// newHeldHost is newStagedHost with a heldCommit Stager.
func newHeldHost(t *testing.T, root string, fail error) (*stagedHost, *heldCommit) {
	t.Helper()
	dt, err := disk.Open(disk.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	held := &heldCommit{Tier: dt, started: make(chan struct{}), release: make(chan struct{}), fail: fail}
	st := tiers.NewStack(tiers.StackConfig{Name: "host", Tiers: []tiers.Entry{{Tier: dt}}})
	c, err := New(Config{Store: st, LocalStore: st.Local(), Stager: held, WorkDir: filepath.Join(root, "ext4"), SigningKey: fleetKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-held.release:
		default:
			close(held.release)
		}
		c.Close()
		st.Close()
	})
	return &stagedHost{root: root, disk: dt, store: st, conv: c}, held
}

// convertHeld converts sampleImage on a newHeldHost in a fresh root: the
// image is handed out, its commit held (or failing with fail) until
// held.release is closed.
func convertHeld(t *testing.T, fail error) (*stagedHost, *heldCommit, *Result) {
	t.Helper()
	h, held := newHeldHost(t, t.TempDir(), fail)
	r, err := h.conv.Materialize(context.Background(), sampleImage(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return h, held, r
}

// deniedLayer is a layer whose caller has not proved access to it.
type deniedLayer struct{ manifest.Layer }

var errDenied = errors.New("no access to this layer")

func (deniedLayer) Authorize(context.Context) error { return errDenied }

// TestConversionHandsOutBeforeHash: a conversion hands its image out while
// the disk tier's hash and commit of it are held: a whole file system
// (e2fsck), read-only, Digest empty. Meanwhile the image is reused here
// (not converted again, and not to a caller without access), IsMaterialized
// says so and Prune keeps it; Hashed waits. Released, Hashed gives the
// file's digest, the tier holds blob and ref, the sidecar the digest, and
// a converter opened after Close reuses the image with its digest.
func TestConversionHandsOutBeforeHash(t *testing.T) {
	h, held, r := convertHeld(t, nil)
	root, ctx, img := h.root, context.Background(), sampleImage()
	<-held.started
	if r.Digest != "" || r.FromCache {
		t.Fatalf("conversion returned %+v; want Digest empty (its hash is held), not from cache", r)
	}
	fi, err := os.Stat(r.Path)
	if err != nil || fi.Mode().Perm() != 0o400 || fi.Size() != r.Size {
		t.Fatalf("handout %s: %v, %v; want a read-only file of %d bytes", r.Path, fi, err, r.Size)
	}
	e2fsck(t, r.Path)

	again, err := h.conv.Materialize(ctx, img, nil)
	if err != nil || !again.FromCache || again.Path != r.Path || again.Digest != "" {
		t.Fatalf("second call while hashing: %+v, %v; want the same image from the cache, digest pending", again, err)
	}
	denied := &testImage{}
	for _, l := range img.Layers() {
		denied.layers = append(denied.layers, deniedLayer{l})
	}
	if got, err := h.conv.Materialize(ctx, denied, nil); !errors.Is(err, errDenied) {
		t.Fatalf("a caller without access to the layers got %+v, %v; want refused", got, err)
	}
	if st := h.conv.Stats(); st.Conversions != 1 || st.LocalHits != 1 {
		t.Fatalf("stats %+v; want 1 conversion, 1 local hit", st)
	}
	if ok, err := h.conv.IsMaterialized(ctx, img, nil); !ok || err != nil {
		t.Fatalf("IsMaterialized while hashing = %v, %v", ok, err)
	}
	if n, _, err := h.conv.Prune(ctx); n != 0 || err != nil {
		t.Fatalf("Prune while hashing removed %d images (%v); want none", n, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if d, err := again.Hashed(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Hashed with a cancelled context while the hash is held = %s, %v", d, err)
	}

	close(held.release)
	d, err := r.Hashed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := hashPath(t, r.Path); got != d {
		t.Fatalf("Hashed = %s; the handout hashes to %s", d, got)
	}
	if d2, err := again.Hashed(ctx); d2 != d || err != nil {
		t.Fatalf("the second result's Hashed = %s, %v; want %s", d2, err, d)
	}
	if _, err := h.disk.Stat(ctx, d); err != nil {
		t.Fatalf("the disk tier does not hold the image after its hash: %v", err)
	}
	if n := countRefs(t, h.disk); n != 1 {
		t.Fatalf("disk tier holds %d derivation refs, want 1", n)
	}
	if r3, err := h.conv.Materialize(ctx, img, nil); err != nil || r3.Digest != d || !r3.FromCache {
		t.Fatalf("after the hash: %+v, %v; want the image with digest %s", r3, err, d)
	}
	if err := h.conv.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	h.conv.Close()
	c2, err := New(Config{Store: h.store, LocalStore: h.store.Local(), Stager: h.disk, WorkDir: filepath.Join(root, "ext4"), SigningKey: fleetKey})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	r4, err := c2.Materialize(ctx, img, nil)
	if err != nil || !r4.FromCache || r4.Digest != d || r4.Path != r.Path {
		t.Fatalf("a new converter: %+v, %v; want the local image with digest %s", r4, err, d)
	}
	if c2.Stats().Conversions != 0 {
		t.Fatal("a new converter converted again")
	}
}

// TestFailedHashNotReused: when the background hash of an image handed out
// unhashed fails (the tier's commit fails), Hashed says so, nothing is
// stored, and the next call converts again rather than reuse an image
// nobody hashed.
func TestFailedHashNotReused(t *testing.T) {
	errCommit := errors.New("injected commit failure")
	h, held, r := convertHeld(t, errCommit)
	ctx, img := context.Background(), sampleImage()
	close(held.release)
	if d, err := r.Hashed(ctx); !errors.Is(err, errCommit) {
		t.Fatalf("Hashed = %s, %v; want the commit's failure", d, err)
	}
	if err := h.conv.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countRefs(t, h.disk); n != 0 {
		t.Fatalf("disk tier holds %d derivation refs after a failed hash", n)
	}
	if ok, err := h.conv.IsMaterialized(ctx, img, nil); ok || err != nil {
		t.Fatalf("IsMaterialized after a failed hash = %v, %v; want false", ok, err)
	}
	held.fail = nil
	r2, err := h.conv.Materialize(ctx, img, nil)
	if err != nil || r2.FromCache {
		t.Fatalf("after a failed hash: %+v, %v; want a conversion", r2, err)
	}
	d, err := r2.Hashed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := hashPath(t, r2.Path); got != d {
		t.Fatalf("Hashed = %s; the image hashes to %s", d, got)
	}
	if st := h.conv.Stats(); st.Conversions != 2 || st.BackgroundStoreFailures != 1 {
		t.Fatalf("stats %+v; want 2 conversions, 1 failed background store", st)
	}
}

// TestCloseWaitsForHash: Close lets a held background hash finish rather
// than cancel it, so the image is committed and reused after a restart.
func TestCloseWaitsForHash(t *testing.T) {
	h, held, r := convertHeld(t, nil)
	root, ctx, img := h.root, context.Background(), sampleImage()
	<-held.started
	closed := make(chan struct{})
	go func() {
		h.conv.Close()
		close(closed)
	}()
	<-h.conv.base.Done() // Close has cancelled what it cancels
	close(held.release)
	<-closed
	d, err := r.Hashed(ctx)
	if err != nil {
		t.Fatalf("Hashed after Close: %v", err)
	}
	if _, err := h.disk.Stat(ctx, d); err != nil {
		t.Fatalf("the disk tier does not hold the image after Close: %v", err)
	}
	c2, err := New(Config{Store: h.store, LocalStore: h.store.Local(), Stager: h.disk, WorkDir: filepath.Join(root, "ext4"), SigningKey: fleetKey})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if r2, err := c2.Materialize(ctx, img, nil); err != nil || !r2.FromCache || r2.Digest != d {
		t.Fatalf("after Close and a new converter: %+v, %v; want the local image %s", r2, err, d)
	}
}
