package ext4

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/testenv"
	"github.com/strata-oci/strata/materialize/internal/tartest"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/disk"
	"github.com/strata-oci/strata/tiers/memory"
)

// stagedHost is one executor as the composition root builds it: a disk
// tier (the Stager) in a root, optionally a shared tier below it, and a
// converter whose WorkDir is root/ext4.
type stagedHost struct {
	root  string
	disk  *disk.Tier
	store *tiers.Stack
	conv  *Converter
}

func newStagedHost(t testing.TB, root string, shared blob.Tier, stage bool) *stagedHost {
	t.Helper()
	dt, err := disk.Open(disk.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	ents := []tiers.Entry{{Tier: dt}}
	if shared != nil {
		ents = append(ents, tiers.Entry{Tier: shared, Shared: true})
	}
	st := tiers.NewStack(tiers.StackConfig{Name: "host", Tiers: ents})
	cfg := Config{Store: st, LocalStore: st.Local(), WorkDir: filepath.Join(root, "ext4"), SigningKey: fleetKey}
	if stage {
		cfg.Stager = dt
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		st.Close()
	})
	return &stagedHost{root: root, disk: dt, store: st, conv: c}
}

// blobPath is where the disk tier keeps d.
func (h *stagedHost) blobPath(d blob.Digest) string {
	hex := d.Encoded()
	return filepath.Join(h.root, "blobs", "sha256", hex[:2], hex)
}

// waitHashed fills in r.Digest of an image handed out before it was
// hashed (see Result.Hashed).
func waitHashed(t testing.TB, r *Result) {
	t.Helper()
	d, err := r.Hashed(context.Background())
	if err != nil {
		t.Fatalf("the image's background hash: %v", err)
	}
	r.Digest = d
}

// writeBytes returns the bytes this process caused to be written to
// storage (/proc/self/io write_bytes: pages it dirtied, in-kernel copies
// included, reflinks not), or -1 where the kernel does not say.
func writeBytes() int64 { return procIO("write_bytes") }

// readChars returns the bytes this process read with read(2) and its
// kind (/proc/self/io rchar: from the page cache or not), or -1.
func readChars() int64 { return procIO("rchar") }

// procIO returns the field of /proc/self/io, or -1.
func procIO(field string) int64 {
	f, err := os.Open("/proc/self/io")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+": "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}

// accountedDir returns a directory on a file system whose writes
// write_bytes counts (a disk, not tmpfs): the test's temporary directory,
// else one under the package directory. It checks by writing 8 MiB.
func accountedDir(t *testing.T) string {
	t.Helper()
	counts := func(dir string) bool {
		f, err := os.CreateTemp(dir, "probe-")
		if err != nil {
			return false
		}
		defer os.Remove(f.Name())
		defer f.Close()
		buf := make([]byte, 8<<20)
		rand.Read(buf)
		before := writeBytes()
		if _, err := f.Write(buf); err != nil {
			return false
		}
		return before >= 0 && writeBytes()-before >= int64(len(buf))
	}
	if dir := t.TempDir(); counts(dir) {
		return dir
	}
	dir, err := os.MkdirTemp(".", ".writes-test-")
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(dir)
	t.Cleanup(func() { os.RemoveAll(abs) })
	if counts(abs) {
		return abs
	}
	testenv.Missing(t, "a file system whose writes /proc/self/io counts (not tmpfs)", "how often a derived image is written")
	return ""
}

func allocatedBytes(t testing.TB, p string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestDerivedImageWrittenOnce: one Materialize (a conversion) plus the
// read-only --out placement write the image's bytes to the file system
// once, plus metadata: the converter writes into the disk tier's staging
// file, the tier commits it by rename, the handout and --out are links of
// that file. Counted with the kernel's own write accounting.
func TestDerivedImageWrittenOnce(t *testing.T) {
	dir := accountedDir(t)
	img, total, _ := genImage(t, dir, 7, []genSpec{{files: 300, bytes: 48 << 20}, {files: 100, bytes: 16 << 20, overwrite: 20}})
	h := newStagedHost(t, filepath.Join(dir, "root"), nil, true)
	ctx := context.Background()
	out := filepath.Join(dir, "out.ext4")

	before := writeBytes()
	r, err := h.conv.Materialize(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitHashed(t, r)
	how, err := CopyOut(r.Path, out, 0o400)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.conv.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	written := writeBytes() - before

	data := allocatedBytes(t, r.Path)
	t.Logf("image: %d MiB of content, %d MiB file, %d MiB allocated; written during Materialize + CopyOut (%s): %d MiB (%.2f full writes)",
		total>>20, r.Size>>20, data>>20, how, written>>20, float64(written)/float64(data))
	if limit := data + data/8 + 4<<20; written > limit {
		t.Errorf("Materialize plus --out wrote %d bytes for an image of %d allocated bytes: more than one full write plus metadata (limit %d)", written, data, limit)
	}
	if data < int64(total)*3/4 {
		t.Fatalf("the image holds %d bytes for %d of content: the measurement is off", data, total)
	}

	// One file: the tier's blob, the handout and --out are the same inode.
	bi, err := os.Stat(h.blobPath(r.Digest))
	if err != nil {
		t.Fatalf("the disk tier does not hold the image: %v", err)
	}
	for _, p := range []string{r.Path, out} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if !os.SameFile(fi, bi) || fi.Mode().Perm() != 0o400 {
			t.Errorf("%s: mode %v, same file as the tier's blob: %v; want a read-only link", p, fi.Mode().Perm(), os.SameFile(fi, bi))
		}
	}
	if how != PlacedLink {
		t.Errorf("CopyOut 0400 placed %q, want a link", how)
	}
	if got := hashPath(t, out); got != r.Digest {
		t.Fatalf("--out hashes to %s, want %s", got, r.Digest)
	}
	e2fsck(t, out)
}

func hashPath(t testing.TB, p string) blob.Digest {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	d, err := hashFile(context.Background(), f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// heldTier is a shared tier whose Puts wait until released (or until
// their context ends) before storing.
type heldTier struct {
	*memory.Tier
	started chan struct{} // closed at the first Put
	release chan struct{}
	once    atomic.Bool
	puts    atomic.Int64
}

func newHeldTier() *heldTier {
	return &heldTier{
		Tier:    memory.New(memory.Config{Name: "shared", Budget: 1 << 30, MaxBlob: 512 << 20}),
		started: make(chan struct{}),
		release: make(chan struct{}),
	}
}

func (h *heldTier) Put(ctx context.Context, d blob.Digest, size int64, r io.Reader) error {
	h.puts.Add(1)
	if h.once.CompareAndSwap(false, true) {
		close(h.started)
	}
	select {
	case <-h.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return h.Tier.Put(ctx, d, size, r)
}

// TestSharedStoreRunsAfterMaterialize: Materialize returns while the
// shared tier's upload is held; the image and its ref reach the local disk
// tier before the upload starts; once released the upload completes (blob, then ref),
// and another executor downloads the image from the shared tier.
func TestSharedStoreRunsAfterMaterialize(t *testing.T) {
	shared := newHeldTier()
	h := newStagedHost(t, t.TempDir(), shared, true)
	ctx := context.Background()
	img := sampleImage()

	done := make(chan error, 1)
	var r *Result
	go func() {
		var err error
		r, err = h.conv.Materialize(ctx, img, nil)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Materialize waits for the shared tier's upload")
	}
	waitHashed(t, r)
	<-shared.started
	if _, err := shared.Stat(ctx, r.Digest); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("shared tier holds the image while its upload is held: %v", err)
	}
	if n := countRefs(t, shared); n != 0 {
		t.Fatalf("shared tier holds %d refs before the blob", n)
	}
	if n := countRefs(t, h.disk); n != 1 {
		t.Fatalf("local disk tier holds %d derivation refs, want 1 at once", n)
	}
	if _, err := h.disk.Stat(ctx, r.Digest); err != nil {
		t.Fatalf("local disk tier: %v", err)
	}
	if ok, err := h.conv.IsMaterialized(ctx, img, nil); !ok || err != nil {
		t.Fatalf("IsMaterialized during the upload = %v, %v", ok, err)
	}

	close(shared.release)
	if err := h.conv.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := shared.Stat(ctx, r.Digest); err != nil {
		t.Fatalf("shared tier after the upload: %v", err)
	}
	if n := countRefs(t, shared); n != 1 {
		t.Fatalf("shared tier holds %d refs after the upload, want 1", n)
	}
	if st := h.conv.Stats(); st.BackgroundStores != 1 || st.BackgroundStoreFailures != 0 || shared.puts.Load() != 1 {
		t.Fatalf("stats %+v, %d shared Puts: want one background store, no failure", st, shared.puts.Load())
	}

	// Another executor, sharing only the shared tier, downloads it.
	other, err := New(Config{Store: shared.Tier, WorkDir: t.TempDir(), SigningKey: fleetKey})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	r2, err := other.Materialize(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitHashed(t, r2)
	if !r2.FromCache || r2.Digest != r.Digest || other.Stats().Conversions != 0 {
		t.Fatalf("other executor: %+v, %+v", r2, other.Stats())
	}
}

// TestCloseCancelsSharedStore: Close ends a held background upload; the
// caller got its image, the failure is counted, not returned, and the
// local tier keeps image and ref.
func TestCloseCancelsSharedStore(t *testing.T) {
	shared := newHeldTier()
	h := newStagedHost(t, t.TempDir(), shared, true)
	ctx := context.Background()
	r, err := h.conv.Materialize(ctx, sampleImage(), nil)
	if err != nil {
		t.Fatal(err)
	}
	waitHashed(t, r)
	<-shared.started
	closed := make(chan struct{})
	go func() { h.conv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(60 * time.Second):
		t.Fatal("Close does not end a held background upload")
	}
	if st := h.conv.Stats(); st.BackgroundStores != 1 || st.BackgroundStoreFailures != 1 {
		t.Fatalf("stats %+v: want the cancelled store counted as failed", st)
	}
	if _, err := shared.Stat(ctx, r.Digest); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("shared tier: %v", err)
	}
	if _, err := h.disk.Stat(ctx, r.Digest); err != nil || countRefs(t, h.disk) != 1 {
		t.Fatalf("local disk tier lost the image (%v) or its ref", err)
	}
	if got := hashPath(t, r.Path); got != r.Digest {
		t.Fatalf("handout hashes to %s", got)
	}
}

// TestStagedHandouts: which handouts share the tier's file, and that a
// handout never changes the tier's bytes nor loses its own to eviction.
func TestStagedHandouts(t *testing.T) {
	ctx := context.Background()
	h := newStagedHost(t, t.TempDir(), nil, true)
	img := sampleImage()

	plain, err := h.conv.Materialize(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitHashed(t, plain)
	grown, err := h.conv.Materialize(ctx, img, &Options{FreeBytes: 16 << 20, FreeInodes: 100})
	if err != nil {
		t.Fatal(err)
	}
	waitHashed(t, grown)
	if st := h.conv.Stats(); st.Conversions != 1 || st.Downloads != 1 {
		t.Fatalf("stats %+v: want the second image from the tier", st)
	}
	bi, err := os.Stat(h.blobPath(plain.Digest))
	if err != nil {
		t.Fatal(err)
	}
	pi, _ := os.Stat(plain.Path)
	gi, _ := os.Stat(grown.Path)
	if !os.SameFile(pi, bi) {
		t.Error("the image without free space is not a link of the tier's blob")
	}
	if os.SameFile(gi, bi) || gi.Size() <= pi.Size() {
		t.Errorf("the image with free space (%d bytes) is not a grown copy of its own", gi.Size())
	}
	if a := allocatedBytes(t, grown.Path); a > allocatedBytes(t, plain.Path)+4<<20 {
		t.Errorf("the grown copy allocates %d bytes for a %d-byte image: its free space is not holes", a, pi.Size())
	}
	for _, p := range []string{plain.Path, grown.Path} {
		if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o400 {
			t.Errorf("%s: mode %v", p, fi.Mode().Perm())
		}
		e2fsck(t, p)
	}
	if got := hashPath(t, h.blobPath(plain.Digest)); got != plain.Digest {
		t.Fatalf("the tier's blob changed: hashes to %s", got)
	}

	// Handed out again from the tier after Cleanup: a link, no copy.
	if err := h.conv.Cleanup(ctx, img, nil); err != nil {
		t.Fatal(err)
	}
	relinked, err := h.conv.Materialize(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitHashed(t, relinked)
	if ri, _ := os.Stat(relinked.Path); !relinked.FromCache || !os.SameFile(ri, bi) || h.conv.Stats().Downloads != 2 {
		t.Fatalf("after Cleanup: %+v, stats %+v: want the tier's file linked again", relinked, h.conv.Stats())
	}

	// Eviction drops the tier's name and usage; the handout stays whole
	// and is still handed out.
	if n, _, err := h.disk.EvictTo(ctx, 0); err != nil || n == 0 {
		t.Fatalf("EvictTo(0) = %d, %v", n, err)
	}
	if u, _ := h.disk.Usage(ctx); u.Blobs != 0 || u.Bytes != 0 {
		t.Fatalf("disk usage after eviction: %+v", u)
	}
	again, err := h.conv.Materialize(ctx, img, nil)
	if err != nil || !again.FromCache || again.Path != plain.Path {
		t.Fatalf("after eviction: %+v, %v", again, err)
	}
	if got := hashPath(t, again.Path); got != plain.Digest {
		t.Fatalf("handout after eviction hashes to %s", got)
	}
}

// TestStagedFailureLeavesNothing: a conversion into the staging file that
// fails leaves no blob, no ref, no staging file and no local image.
func TestStagedFailureLeavesNothing(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	h := newStagedHost(t, root, nil, true)
	big := tartest.New().File("big", tartest.Content("x", 3<<20)).Tar()
	img := sampleImage()
	img.layers = append(img.layers, &rawLayer{data: big, failAfter: 1 << 20})
	if _, err := h.conv.Materialize(ctx, img, nil); !errors.Is(err, errInjected) {
		t.Fatalf("Materialize: %v", err)
	}
	if u, _ := h.disk.Usage(ctx); u.Blobs != 0 || u.Refs != 0 {
		t.Fatalf("disk tier after a failed conversion: %+v", u)
	}
	for _, d := range []string{filepath.Join(root, "tmp"), filepath.Join(root, "ext4", "tmp"), filepath.Join(root, "ext4", "images")} {
		if names, _ := osReadDir(d); len(names) != 0 {
			t.Errorf("%s holds %v", d, names)
		}
	}
}

// TestCopyOut: each placement gives dst the image's bytes and holes with
// the mode asked for, replaces a symlink at dst without following it, and
// a read-only link only when asked for read-only.
func TestCopyOut(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.ext4")
	content := make([]byte, 256<<10)
	rand.Read(content)
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(content, 32<<20) // 32 MiB hole first
	f.Chmod(0o400)
	f.Close()
	want := append(make([]byte, 32<<20), content...)

	for _, tc := range []struct {
		desc     string
		mode     os.FileMode
		wantLink bool
	}{
		{"read-only as the source: a link", 0o400, true},
		{"writable: a file of its own", 0o600, false},
		{"read-only but another mode: a file of its own", 0o444, false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			dst := filepath.Join(dir, "out-"+strconv.Itoa(int(tc.mode)))
			victim := filepath.Join(dir, "victim-"+strconv.Itoa(int(tc.mode)))
			os.WriteFile(victim, []byte("keep"), 0o600)
			if err := os.Symlink(victim, dst); err != nil {
				t.Fatal(err)
			}
			how, err := CopyOut(src, dst, tc.mode)
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Lstat(dst)
			if err != nil {
				t.Fatal(err)
			}
			si, _ := os.Stat(src)
			if fi.Mode().Perm() != tc.mode || !fi.Mode().IsRegular() {
				t.Errorf("dst mode %v, want %v regular", fi.Mode(), tc.mode)
			}
			if os.SameFile(fi, si) != tc.wantLink || (how == PlacedLink) != tc.wantLink {
				t.Errorf("placed %q, same file: %v; want link %v", how, os.SameFile(fi, si), tc.wantLink)
			}
			if got, _ := os.ReadFile(dst); !bytes.Equal(got, want) {
				t.Error("dst content differs")
			}
			if a := allocatedBytes(t, dst); a > 8<<20 {
				t.Errorf("dst (%s) allocates %d bytes for 256 KiB of data: holes lost", how, a)
			}
			if got, _ := os.ReadFile(victim); string(got) != "keep" {
				t.Error("CopyOut wrote through a symlink at dst")
			}
			if names, _ := osReadDir(dir); strings.Contains(strings.Join(names, ","), ".tmp-") {
				t.Errorf("temporary files left: %v", names)
			}
		})
	}
	if _, err := CopyOut(filepath.Join(dir, "missing"), filepath.Join(dir, "x"), 0o600); err == nil {
		t.Error("CopyOut of a missing file succeeded")
	}
	if _, err := CopyOut(dir, filepath.Join(dir, "x"), 0o600); err == nil {
		t.Error("CopyOut of a directory succeeded")
	}
	if _, err := os.Lstat(filepath.Join(dir, "x")); !errors.Is(err, os.ErrNotExist) {
		t.Error("a failed CopyOut left dst")
	}
}

// TestCopyFile: CopyFile copies into a file the caller made, holes kept,
// on one file system and across two (/dev/shm, where copy_file_range may
// be refused and the sparse copy through this process takes over).
func TestCopyFile(t *testing.T) {
	dir := t.TempDir()
	srcDirs := []string{dir}
	if shm, err := os.MkdirTemp("/dev/shm", "copyfile-"); err == nil {
		t.Cleanup(func() { os.RemoveAll(shm) })
		srcDirs = append(srcDirs, shm)
	}
	content := make([]byte, 100<<10)
	rand.Read(content)
	want := make([]byte, 40<<20)
	copy(want[16<<20:], content)
	for i, sd := range srcDirs {
		in, err := os.Create(filepath.Join(sd, "in"))
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		in.WriteAt(content, 16<<20)
		in.Truncate(40 << 20) // a trailing hole too
		out, err := os.Create(filepath.Join(dir, "out"+strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		how, err := CopyFile(out, in)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(out.Name())
		if !bytes.Equal(got, want) {
			t.Fatalf("CopyFile from %s (%s): content differs (%d bytes, want %d)", sd, how, len(got), len(want))
		}
		if a := allocatedBytes(t, out.Name()); a > 4<<20 {
			t.Errorf("CopyFile from %s (%s) allocates %d bytes for 100 KiB of data", sd, how, a)
		}
		t.Logf("from %s: %s", sd, how)
	}
}

// damageContent writes b at off into the content of sampleImage's etc/c
// (which finishFS never reads) in the read-only image file p, behind the
// tier's back.
func damageContent(t *testing.T, p string, off int64, b []byte) {
	t.Helper()
	img, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(img, tartest.Content("b", 300_000)[:4096])
	if at < 0 {
		t.Fatal("etc/c's content not found in the image")
	}
	os.Chmod(p, 0o600)
	defer os.Chmod(p, 0o400)
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, int64(at)+off); err != nil {
		t.Fatal(err)
	}
}

// TestRottenTierFileIsNotLinked: a tier file that no longer hashes to its
// digest is not handed out by link: the image comes back right (the rotten
// copy dropped, the image converted again).
func TestRottenTierFileIsNotLinked(t *testing.T) {
	ctx := context.Background()
	h := newStagedHost(t, t.TempDir(), nil, true)
	img := sampleImage()
	r, err := h.conv.Materialize(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitHashed(t, r)
	if err := h.conv.Cleanup(ctx, img, nil); err != nil {
		t.Fatal(err)
	}
	p := h.blobPath(r.Digest)
	damageContent(t, p, 100, []byte("rot"))

	r2, err := h.conv.Materialize(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitHashed(t, r2)
	if got := hashPath(t, r2.Path); got != r.Digest || r2.Digest != r.Digest {
		t.Fatalf("image after rot hashes to %s (Result %s), want %s", got, r2.Digest, r.Digest)
	}
	pi, _ := os.Stat(r2.Path)
	if ri, err := os.Stat(p); err == nil && os.SameFile(pi, ri) {
		if got := hashPath(t, p); got != r.Digest {
			t.Fatal("the rotten tier file was handed out")
		}
	}
	e2fsck(t, r2.Path)
}

// TestDerivedImageDownloadWrittenOnce: an executor whose local tiers are
// empty downloads the derived image another one stored in the shared tier,
// and writes it once: the stack's write-back into the disk tier is the
// image (the handout is a read-only link of that file), not a second copy
// in WorkDir next to it.
func TestDerivedImageDownloadWrittenOnce(t *testing.T) {
	dir := accountedDir(t)
	img, _, _ := genImage(t, dir, 8, []genSpec{{files: 300, bytes: 48 << 20}})
	shared := memory.New(memory.Config{Name: "shared", Budget: 1 << 30, MaxBlob: 512 << 20})
	ctx := context.Background()
	a := newStagedHost(t, filepath.Join(dir, "a"), shared, true)
	if _, err := a.conv.Materialize(ctx, img, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.conv.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	b := newStagedHost(t, filepath.Join(dir, "b"), shared, true)
	before, readBefore := writeBytes(), readChars()
	r, err := b.conv.Materialize(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitHashed(t, r)
	written, read := writeBytes()-before, readChars()-readBefore
	if st := b.conv.Stats(); !r.FromCache || st.Downloads != 1 || st.Conversions != 0 {
		t.Fatalf("from cache %v, stats %+v: want one download", r.FromCache, st)
	}
	data := allocatedBytes(t, r.Path)
	t.Logf("downloaded image: %d MiB allocated; written: %d MiB (%.2f full writes)", data>>20, written>>20, float64(written)/float64(data))
	if limit := data + data/8 + 4<<20; written > limit {
		t.Errorf("the download wrote %d bytes for an image of %d allocated bytes: more than one full write plus metadata (limit %d)", written, data, limit)
	}
	// The tier's file was written from the stream just verified: it is
	// not read back to be hashed again before it is linked.
	t.Logf("read back: %d MiB", read>>20)
	if read > data/4 {
		t.Errorf("the download read %d bytes back for an image of %d allocated bytes: hashed again after the verified stream", read, data)
	}
	bi, err := os.Stat(b.blobPath(r.Digest))
	if err != nil {
		t.Fatalf("the disk tier does not hold the downloaded image: %v", err)
	}
	fi, err := os.Stat(r.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(fi, bi) || fi.Mode().Perm() != 0o400 {
		t.Errorf("handout mode %v, same file as the tier's blob: %v; want a read-only link", fi.Mode().Perm(), os.SameFile(fi, bi))
	}
	if got := hashPath(t, r.Path); got != r.Digest {
		t.Fatalf("the handout hashes to %s, want %s", got, r.Digest)
	}
}

// TestUnsyncedImageReusedOnlyOnItsBoot: a conversion hands out its image
// before the image is on disk (the fsync runs in the background), and a
// local image is reused without hashing. So until the fsync is done the
// sidecar names the boot, and after a machine crash (another boot id) the
// image, perhaps torn, is not reused: it is taken from the store, hashed.
// Once synced it is reused on any boot.
func TestUnsyncedImageReusedOnlyOnItsBoot(t *testing.T) {
	ctx := context.Background()
	boot := "boot-a"
	oldBoot, oldSync := bootID, syncImage
	bootID = func() string { return boot }
	syncFails := true
	syncImage = func(f *os.File) error {
		if syncFails {
			return errors.New("held by the test")
		}
		return f.Sync()
	}
	t.Cleanup(func() { bootID, syncImage = oldBoot, oldSync })

	h := newStagedHost(t, t.TempDir(), nil, true)
	img := sampleImage()
	r, err := h.conv.Materialize(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitHashed(t, r)
	if err := h.conv.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	dv, err := h.conv.derive(img, nil)
	if err != nil {
		t.Fatal(err)
	}
	sidecar := func() localMeta {
		t.Helper()
		b, err := os.ReadFile(h.conv.metaPath(dv))
		if err != nil {
			t.Fatal(err)
		}
		var m localMeta
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	if m := sidecar(); m.Unsynced != "boot-a" {
		t.Fatalf("sidecar of an image not yet on disk: unsynced %q, want boot-a", m.Unsynced)
	}
	if r2, err := h.conv.Materialize(ctx, img, nil); err != nil || !r2.FromCache || h.conv.Stats().LocalHits != 1 {
		t.Fatalf("same boot: %+v, %v, stats %+v; want a local hit", r2, err, h.conv.Stats())
	}

	// The machine went down before the fsync: the file is torn.
	boot = "boot-b"
	p := h.blobPath(r.Digest)
	if pi, err := os.Stat(p); err != nil || !sameFile(t, pi, r.Path) {
		t.Fatalf("the local image is not the tier's file (%v)", err)
	}
	damageContent(t, p, 0, make([]byte, 4096)) // a torn page

	syncFails = false
	r3, err := h.conv.Materialize(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitHashed(t, r3)
	if st := h.conv.Stats(); st.LocalHits != 1 {
		t.Fatalf("after a machine crash the unsynced local image was reused: stats %+v", st)
	}
	if got := hashPath(t, r3.Path); got != r.Digest || r3.Digest != r.Digest {
		t.Fatalf("image after the crash hashes to %s (Result %s), want %s", got, r3.Digest, r.Digest)
	}
	if err := h.conv.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if m := sidecar(); m.Unsynced != "" {
		t.Fatalf("sidecar still unsynced (%q) after the background fsync", m.Unsynced)
	}
	boot = "boot-c"
	if r4, err := h.conv.Materialize(ctx, img, nil); err != nil || !r4.FromCache || h.conv.Stats().LocalHits != 2 {
		t.Fatalf("synced image on a later boot: %+v, %v, stats %+v; want a local hit", r4, err, h.conv.Stats())
	}
	e2fsck(t, r3.Path)
}

func sameFile(t *testing.T, fi os.FileInfo, path string) bool {
	t.Helper()
	pi, err := os.Stat(path)
	return err == nil && os.SameFile(fi, pi)
}
