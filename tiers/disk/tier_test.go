package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/iotest"

	"github.com/strata-oci/strata/blob"
)

func TestPutOpenStatDelete(t *testing.T) {
	ctx := context.Background()
	tr := openTier(t, Config{Name: "local"})
	tests := []struct {
		desc string
		data []byte
	}{
		{"empty", nil},
		{"one byte", []byte{7}},
		{"below a hole block", randomBytes(1, 1000)},
		{"exactly one hole block", randomBytes(2, holeBlock)},
		{"several buffers, unaligned", randomBytes(3, 3*copyBufSize+12345)},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			d := put(t, tr, tt.data)
			info, err := tr.Stat(ctx, d)
			if err != nil || info.Size != int64(len(tt.data)) || info.Digest != d || info.Tier != "local" || info.LastAccess.IsZero() {
				t.Fatalf("Stat = %+v, %v", info, err)
			}
			mustRead(t, tr, d, tt.data)
			fi, err := os.Stat(filepath.Join(tr.Root(), "blobs", "sha256", d.Encoded()[:2], d.Encoded()))
			if err != nil || fi.Size() != int64(len(tt.data)) {
				t.Fatalf("blob file: %v, %v", fi, err)
			}
			if err := tr.Delete(ctx, d); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			requireMiss(t, tr, d)
			if _, _, err := tr.Open(ctx, d); !errors.Is(err, blob.ErrNotFound) {
				t.Fatalf("Open after Delete = %v", err)
			}
			if err := tr.Delete(ctx, d); !errors.Is(err, blob.ErrNotFound) {
				t.Fatalf("second Delete = %v", err)
			}
		})
	}
	if u := usage(t, tr); u.Blobs != 0 || u.Bytes != 0 {
		t.Fatalf("usage after deleting everything = %+v", u)
	}
}

func TestInvalidDigests(t *testing.T) {
	ctx := context.Background()
	tr := openTier(t, Config{})
	for _, tt := range []struct {
		desc string
		d    blob.Digest
	}{
		{"empty", ""},
		{"path traversal", "sha256:../../../../etc/passwd"},
		{"short", "sha256:abc"},
		{"sha512", blob.Digest("sha512:" + strings.Repeat("a", 128))},
		{"uppercase", blob.Digest("sha256:" + strings.Repeat("A", 64))},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			if _, err := tr.Stat(ctx, tt.d); !errors.Is(err, blob.ErrInvalidDigest) {
				t.Errorf("Stat = %v", err)
			}
			if _, _, err := tr.Open(ctx, tt.d); !errors.Is(err, blob.ErrInvalidDigest) {
				t.Errorf("Open = %v", err)
			}
			if err := tr.Put(ctx, tt.d, 1, strings.NewReader("x")); !errors.Is(err, blob.ErrInvalidDigest) {
				t.Errorf("Put = %v", err)
			}
			if err := tr.Delete(ctx, tt.d); !errors.Is(err, blob.ErrInvalidDigest) {
				t.Errorf("Delete = %v", err)
			}
		})
	}
}

func TestPutRejectsBadContent(t *testing.T) {
	ctx := context.Background()
	data := randomBytes(4, 200_000)
	d := blob.FromBytes(data)
	tests := []struct {
		desc    string
		size    int64
		r       io.Reader
		wantErr error
	}{
		{"short stream", int64(len(data)), bytes.NewReader(data[:len(data)-1]), blob.ErrMismatch},
		{"long stream", int64(len(data)), io.MultiReader(bytes.NewReader(data), strings.NewReader("x")), blob.ErrMismatch},
		{"wrong size", int64(len(data) - 1), bytes.NewReader(data), blob.ErrMismatch},
		{"flipped byte", int64(len(data)), bytes.NewReader(append([]byte{data[0] ^ 1}, data[1:]...)), blob.ErrMismatch},
		{"reader error", int64(len(data)), iotest.ErrReader(io.ErrClosedPipe), io.ErrClosedPipe},
		{"negative size", -1, bytes.NewReader(data), blob.ErrInvalidDigest},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			tr := openTier(t, Config{})
			err := tr.Put(ctx, d, tt.size, tt.r)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Put = %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), string(d)) {
				t.Errorf("error %q does not name the digest", err)
			}
			requireMiss(t, tr, d)
			if left := dirEntries(t, filepath.Join(tr.Root(), "tmp")); len(left) != 0 {
				t.Fatalf("temp files left: %v", left)
			}
			if u := usage(t, tr); u.Blobs != 0 {
				t.Fatalf("usage %+v", u)
			}
		})
	}
}

func TestPutTooLarge(t *testing.T) {
	tests := []struct {
		desc string
		cfg  Config
		max  int
	}{
		{"default limit: the low watermark of the budget", Config{Budget: 1000}, 850},
		{"explicit limit", Config{Budget: 1000, MaxBlob: 990}, 990},
		{"limit without a budget", Config{MaxBlob: 100}, 100},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			tr := openTier(t, tt.cfg)
			big := randomBytes(5, tt.max+1)
			cr := &countingReader{r: bytes.NewReader(big)}
			err := tr.Put(context.Background(), blob.FromBytes(big), int64(len(big)), cr)
			if !errors.Is(err, blob.ErrTooLarge) || cr.n != 0 {
				t.Fatalf("Put of %d bytes = %v after reading %d bytes; want ErrTooLarge, nothing read", len(big), err, cr.n)
			}
			put(t, tr, big[:tt.max])
		})
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func TestPutIdempotent(t *testing.T) {
	tr := openTier(t, Config{})
	data := randomBytes(6, 5000)
	d := put(t, tr, data)
	cr := &countingReader{r: bytes.NewReader(data)}
	if err := tr.Put(context.Background(), d, int64(len(data)), cr); err != nil {
		t.Fatalf("second Put: %v", err)
	}
	if cr.n != 0 {
		t.Fatalf("second Put read %d bytes, want 0", cr.n)
	}
	if u := usage(t, tr); u.Blobs != 1 || u.Bytes != int64(len(data)) {
		t.Fatalf("usage %+v", u)
	}
}

func TestConcurrentPutsOfOneDigest(t *testing.T) {
	tr := openTier(t, Config{})
	data := randomBytes(7, 3<<20)
	d := blob.FromBytes(data)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := tr.Put(context.Background(), d, int64(len(data)), bytes.NewReader(data)); err != nil {
				errs <- err
				return
			}
			got, err := readAll(tr, d)
			if err == nil && !bytes.Equal(got, data) {
				err = fmt.Errorf("content differs")
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if u := usage(t, tr); u.Blobs != 1 || u.Bytes != int64(len(data)) {
		t.Fatalf("usage %+v, want 1 blob of %d bytes", u, len(data))
	}
	if left := dirEntries(t, filepath.Join(tr.Root(), "tmp")); len(left) != 0 {
		t.Fatalf("temp files left: %v", left)
	}
}

// cancelAfter cancels its context once n bytes were read.
type cancelAfter struct {
	r      io.Reader
	n      int64
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n -= int64(n)
	if c.n <= 0 {
		c.cancel()
	}
	return n, err
}

func TestPutCancelledMidStream(t *testing.T) {
	tr := openTier(t, Config{})
	data := randomBytes(8, 8<<20)
	d := blob.FromBytes(data)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := tr.Put(ctx, d, int64(len(data)), &cancelAfter{r: iotest.HalfReader(bytes.NewReader(data)), n: 1 << 20, cancel: cancel})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Put = %v, want context.Canceled", err)
	}
	requireMiss(t, tr, d)
	if left := dirEntries(t, filepath.Join(tr.Root(), "tmp")); len(left) != 0 {
		t.Fatalf("temp files left: %v", left)
	}
}

func TestReadCancelled(t *testing.T) {
	tr := openTier(t, Config{})
	data := randomBytes(9, 1<<20)
	d := put(t, tr, data)
	ctx, cancel := context.WithCancel(context.Background())
	rc, _, err := tr.Open(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := rc.Read(make([]byte, 100)); err != nil {
		t.Fatalf("first Read: %v", err)
	}
	cancel()
	if _, err := io.ReadAll(rc); !errors.Is(err, context.Canceled) {
		t.Fatalf("Read after cancel = %v, want context.Canceled", err)
	}
	// The blob itself is fine.
	mustRead(t, tr, d, data)
}

func TestReadWhileDeleted(t *testing.T) {
	tr := openTier(t, Config{})
	data := randomBytes(10, 2<<20)
	d := put(t, tr, data)
	rc, _, err := tr.Open(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	head := make([]byte, 1000)
	if _, err := io.ReadFull(rc, head); err != nil {
		t.Fatal(err)
	}
	if err := tr.Delete(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(append(head, rest...), data) {
		t.Fatalf("reading an unlinked blob: %d bytes, %v", len(rest), err)
	}
	requireMiss(t, tr, d)
}

func TestCorruptFileIsCaughtAndDropped(t *testing.T) {
	data := randomBytes(11, 300_000)
	d := blob.FromBytes(data)
	tests := []struct {
		desc   string
		damage func(path string) error
	}{
		{"flipped byte", func(p string) error {
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteAt([]byte{data[123_456] ^ 0x20}, 123_456)
			return err
		}},
		{"truncated", func(p string) error { return os.Truncate(p, 1000) }},
		{"extended", func(p string) error { return os.Truncate(p, int64(len(data)+1)) }},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			tr := openTier(t, Config{})
			put(t, tr, data)
			if err := tt.damage(tr.path(d.Encoded())); err != nil {
				t.Fatal(err)
			}
			got, err := readAll(tr, d)
			var me *blob.MismatchError
			if !errors.Is(err, blob.ErrMismatch) || !errors.As(err, &me) || me.Want != d {
				t.Fatalf("read of damaged blob = %d bytes, %v; want *MismatchError", len(got), err)
			}
			if !blob.IsMiss(err) {
				t.Fatalf("IsMiss(%v) = false", err)
			}
			requireMiss(t, tr, d)
			if _, err := os.Lstat(tr.path(d.Encoded())); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("damaged file still there: %v", err)
			}
			if u := usage(t, tr); u.Blobs != 0 || u.Bytes != 0 {
				t.Fatalf("usage %+v", u)
			}
			// The caller refetches: a new Put works.
			put(t, tr, data)
			mustRead(t, tr, d, data)
		})
	}
}

func TestMissingFileIsAMiss(t *testing.T) {
	tr := openTier(t, Config{})
	data := randomBytes(12, 1000)
	d := put(t, tr, data)
	if err := os.Remove(tr.path(d.Encoded())); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tr.Open(context.Background(), d); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Open = %v, want ErrNotFound", err)
	}
	requireMiss(t, tr, d)
	if u := usage(t, tr); u.Blobs != 0 {
		t.Fatalf("usage %+v", u)
	}
}

func TestSparseStorage(t *testing.T) {
	// 64 MiB, zero but for a few scattered non-zero runs (an ext4 image
	// is mostly like this).
	const size = 64 << 20
	data := make([]byte, size)
	for _, off := range []int{0, 5 << 20, 5<<20 + 70_000, 40<<20 + 3, size - 10} {
		copy(data[off:], randomBytes(uint64(off), 10))
	}
	tr := openTier(t, Config{})
	d := put(t, tr, data)
	var st syscall.Stat_t
	if err := syscall.Stat(tr.path(d.Encoded()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size {
		t.Fatalf("st_size = %d, want %d", st.Size, size)
	}
	// Five dirty 64 KiB blocks (one run crosses a block boundary: six).
	if alloc := st.Blocks * 512; alloc > 1<<20 {
		t.Fatalf("blob occupies %d bytes on disk for %d logical; holes were not left", alloc, size)
	}
	mustRead(t, tr, d, data)

	// A dense blob is stored in full.
	dense := randomBytes(13, 4<<20)
	dd := put(t, tr, dense)
	if err := syscall.Stat(tr.path(dd.Encoded()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 < int64(len(dense)) {
		t.Fatalf("dense blob occupies only %d bytes", st.Blocks*512)
	}
}

func TestSparseWriterWrite(t *testing.T) {
	// Write (not ReadFrom) with awkward chunk sizes gives the same bytes.
	data := make([]byte, 5*holeBlock+100)
	copy(data[holeBlock-3:], "abcdef")
	copy(data[4*holeBlock+7:], "xyz")
	for _, chunk := range []int{1, 1000, holeBlock - 1, holeBlock, holeBlock + 1, len(data)} {
		t.Run(fmt.Sprint("chunk ", chunk), func(t *testing.T) {
			f, err := os.Create(filepath.Join(t.TempDir(), "f"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			w := &sparseWriter{f: f}
			for p := data; len(p) > 0; {
				n := min(chunk, len(p))
				if m, err := w.Write(p[:n]); err != nil || m != n {
					t.Fatalf("Write = %d, %v", m, err)
				}
				p = p[n:]
			}
			if err := w.finish(); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(f.Name())
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("file differs (%d bytes, %v)", len(got), err)
			}
		})
	}
}

func TestAccessTimesPersist(t *testing.T) {
	ctx := context.Background()
	clock := &testClock{}
	root := t.TempDir()
	tr, err := Open(Config{Root: root, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	a := put(t, tr, randomBytes(14, 100))
	b := put(t, tr, randomBytes(15, 100))
	before, _ := tr.Stat(ctx, a)
	if _, err := readAll(tr, a); err != nil {
		t.Fatal(err)
	}
	after, _ := tr.Stat(ctx, a)
	if !after.LastAccess.After(before.LastAccess) {
		t.Fatalf("LastAccess not refreshed by Open: %v then %v", before.LastAccess, after.LastAccess)
	}
	// An access to b followed by its deletion: the buffered access must
	// not bring the row back when it is flushed.
	if _, err := readAll(tr, b); err != nil {
		t.Fatal(err)
	}
	if err := tr.Delete(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := tr.flush(); err != nil {
		t.Fatal(err)
	}
	requireMiss(t, tr, b)
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	tr = openTier(t, Config{Root: root, Now: clock.Now})
	if got, err := tr.Stat(ctx, a); err != nil || !got.LastAccess.Equal(after.LastAccess) {
		t.Fatalf("after reopen Stat = %+v, %v; want LastAccess %v", got, err, after.LastAccess)
	}
	requireMiss(t, tr, b)
	if rs := tr.Reconciled(); rs != (ReconcileStats{}) {
		t.Fatalf("clean reopen reconciled %+v", rs)
	}
}

func TestClosed(t *testing.T) {
	tr := openTier(t, Config{})
	d := put(t, tr, []byte("x"))
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := tr.Stat(ctx, d); !errors.Is(err, blob.ErrUnavailable) {
		t.Errorf("Stat after Close = %v", err)
	}
	if err := tr.Put(ctx, blob.FromBytes([]byte("y")), 1, strings.NewReader("y")); !errors.Is(err, blob.ErrUnavailable) {
		t.Errorf("Put after Close = %v", err)
	}
	if _, err := tr.GetRef(ctx, blob.RefKey{Namespace: "tag", Name: "x"}); !errors.Is(err, blob.ErrUnavailable) {
		t.Errorf("GetRef after Close = %v", err)
	}
	if err := tr.Close(); !errors.Is(err, blob.ErrUnavailable) {
		t.Errorf("second Close = %v", err)
	}
}

func TestWalk(t *testing.T) {
	tr := openTier(t, Config{})
	want := map[blob.Digest]int64{}
	for i := 0; i < 3; i++ {
		data := []byte(fmt.Sprint("blob ", i))
		want[put(t, tr, data)] = int64(len(data))
	}
	// More rows than one scan batch; Walk lists the index, so rows
	// without files are enough to page through it.
	if err := tr.writeBatchDB(func(add func(string, row) error) error {
		for i := 0; i < 1300; i++ {
			d := blob.FromBytes([]byte(fmt.Sprint("row ", i)))
			want[d] = int64(i)
			if err := add(d.Encoded(), row{size: int64(i), atime: 1}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	got := map[blob.Digest]int64{}
	err := tr.Walk(context.Background(), func(info blob.Info) error {
		if _, dup := got[info.Digest]; dup {
			return fmt.Errorf("%s listed twice", info.Digest)
		}
		got[info.Digest] = info.Size
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("Walk listed %d blobs, want %d", len(got), len(want))
	}
	for d, n := range want {
		if got[d] != n {
			t.Fatalf("Walk: %s size %d, want %d", d, got[d], n)
		}
	}
	stop := errors.New("stop")
	calls := 0
	if err := tr.Walk(context.Background(), func(blob.Info) error { calls++; return stop }); err != stop || calls != 1 {
		t.Fatalf("Walk stopping: %v after %d calls", err, calls)
	}
}

// FuzzSparseWriter: whatever mix of zero and non-zero runs, and whatever
// the write sizes, the file holds exactly the bytes written.
func FuzzSparseWriter(f *testing.F) {
	f.Add([]byte{0, 1, 0, 0, 2}, uint32(1000))
	f.Add([]byte{0, 0, 0}, uint32(holeBlock))
	f.Add([]byte{3, 0}, uint32(holeBlock+1))
	f.Fuzz(func(t *testing.T, layout []byte, chunk uint32) {
		if len(layout) > 64 || chunk == 0 {
			return
		}
		// Each layout byte is a run: 0 -> a 64 KiB zero run, b -> b*997 bytes of b.
		var data []byte
		for _, b := range layout {
			if b == 0 {
				data = append(data, make([]byte, holeBlock)...)
			} else {
				data = append(data, bytes.Repeat([]byte{b}, int(b)*997)...)
			}
		}
		f, err := os.Create(filepath.Join(t.TempDir(), "f"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		w := &sparseWriter{f: f}
		for p := data; len(p) > 0; {
			n := min(int(chunk), len(p))
			if m, err := w.Write(p[:n]); err != nil || m != n {
				t.Fatalf("Write = %d, %v", m, err)
			}
			p = p[n:]
		}
		if err := w.finish(); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(f.Name())
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("file differs from the %d bytes written (%d bytes, %v)", len(data), len(got), err)
		}
	})
}
