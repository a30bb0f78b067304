package tiertest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/strata-oci/strata/blob"
)

// missing is a well-formed digest of content no test stores.
var missing = blob.FromBytes([]byte("tiertest: this blob is never stored"))

// expectMiss fails t unless the blob is absent: Stat and Open must both
// return errors wrapping blob.ErrNotFound.
func expectMiss(t *testing.T, tier blob.Tier, d blob.Digest, why string) {
	t.Helper()
	ctx := context.Background()
	if info, err := tier.Stat(ctx, d); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("%s: Stat(%s) = %+v, %v; want ErrNotFound", why, d, info, err)
	}
	rc, _, err := tier.Open(ctx, d)
	if err == nil {
		rc.Close()
	}
	if !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("%s: Open(%s) err = %v; want ErrNotFound", why, d, err)
	}
}

// expectContent fails t unless d is stored with exactly want.
func expectContent(t *testing.T, tier blob.Tier, d blob.Digest, want []byte) {
	t.Helper()
	ctx := context.Background()
	info, err := tier.Stat(ctx, d)
	if err != nil {
		t.Fatalf("Stat(%s) = %v", d, err)
	}
	if info.Size != int64(len(want)) {
		t.Errorf("Stat(%s).Size = %d, want %d", d, info.Size, len(want))
	}
	if got := ReadAll(t, ctx, tier, d); !bytes.Equal(got, want) {
		t.Errorf("content of %s: got %d bytes (digest %s), want %d bytes", d, len(got), blob.FromBytes(got), len(want))
	}
}

func (s *suite) testNotFound(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	_, err := tier.Stat(ctx, missing)
	if !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Stat of a missing blob = %v, want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), missing.Encoded()) {
		t.Errorf("Stat miss error %q does not name the digest", err)
	}
	if errors.Is(err, blob.ErrUnavailable) {
		t.Errorf("Stat miss error %q also matches ErrUnavailable; a miss must be distinct", err)
	}
	rc, _, err := tier.Open(ctx, missing)
	if err == nil {
		rc.Close()
	}
	if !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("Open of a missing blob = %v, want ErrNotFound", err)
	} else if !strings.Contains(err.Error(), missing.Encoded()) {
		t.Errorf("Open miss error %q does not name the digest", err)
	}
	err = tier.Delete(ctx, missing)
	if s.noBlobDelete() {
		if !errors.Is(err, blob.ErrUnsupported) {
			t.Errorf("Delete on a tier that cannot delete = %v, want ErrUnsupported", err)
		}
	} else if !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("Delete of a missing blob = %v, want ErrNotFound", err)
	}
	k := blob.RefKey{Namespace: blob.NamespaceTag, Scope: "tiertest", Name: "never-stored"}
	if _, err := tier.GetRef(ctx, k); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("GetRef of a missing ref = %v, want ErrNotFound", err)
	}
	err = tier.DeleteRef(ctx, k)
	if s.cfg.CannotDelete {
		if !errors.Is(err, blob.ErrUnsupported) {
			t.Errorf("DeleteRef on a tier that cannot delete = %v, want ErrUnsupported", err)
		}
	} else if !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("DeleteRef of a missing ref = %v, want ErrNotFound", err)
	}
}

func (s *suite) testInvalidDigest(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	good := blob.FromBytes([]byte("x"))
	tests := []struct {
		desc string
		d    blob.Digest
	}{
		{"empty", ""},
		{"hex without algorithm", blob.Digest(good.Encoded())},
		{"sha512", blob.Digest("sha512:" + strings.Repeat("ab", 64))},
		{"md5", blob.Digest("md5:" + strings.Repeat("ab", 16))},
		{"short hex", blob.Digest("sha256:abcd")},
		{"long hex", blob.Digest(string(good) + "00")},
		{"uppercase hex", blob.Digest("sha256:" + strings.ToUpper(good.Encoded()))},
		{"non-hex", blob.Digest("sha256:" + strings.Repeat("g", 64))},
		{"path traversal", blob.Digest("sha256:../../../../etc/passwd")},
		{"slash in hex", blob.Digest("sha256:" + strings.Repeat("a", 31) + "/" + strings.Repeat("a", 32))},
		{"trailing newline", blob.Digest(string(good) + "\n")},
		{"NUL byte", blob.Digest(string(good[:20]) + "\x00" + string(good[21:]))},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			if _, err := tier.Stat(ctx, tt.d); !errors.Is(err, blob.ErrInvalidDigest) {
				t.Errorf("Stat(%q) = %v, want ErrInvalidDigest", tt.d, err)
			}
			rc, _, err := tier.Open(ctx, tt.d)
			if err == nil {
				rc.Close()
			}
			if !errors.Is(err, blob.ErrInvalidDigest) {
				t.Errorf("Open(%q) = %v, want ErrInvalidDigest", tt.d, err)
			}
			if err := tier.Put(ctx, tt.d, 1, strings.NewReader("x")); !errors.Is(err, blob.ErrInvalidDigest) {
				t.Errorf("Put(%q) = %v, want ErrInvalidDigest", tt.d, err)
			}
			err = tier.Delete(ctx, tt.d)
			if !errors.Is(err, blob.ErrInvalidDigest) && !(s.noBlobDelete() && errors.Is(err, blob.ErrUnsupported)) {
				t.Errorf("Delete(%q) = %v, want ErrInvalidDigest", tt.d, err)
			}
		})
	}
	// The tier must still work and hold nothing after all that.
	d := PutBytes(t, ctx, tier, []byte("x"))
	expectContent(t, tier, d, []byte("x"))
}

func (s *suite) testEmptyBlob(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	if err := tier.Put(ctx, blob.EmptyDigest, 0, bytes.NewReader(nil)); err != nil {
		t.Fatalf("Put of the empty blob = %v", err)
	}
	expectContent(t, tier, blob.EmptyDigest, nil)
	// A reader that reports EOF together with no data, then nothing at all.
	if err := tier.Put(ctx, blob.EmptyDigest, 0, iotest.DataErrReader(bytes.NewReader(nil))); err != nil {
		t.Fatalf("second Put of the empty blob = %v", err)
	}
	expectContent(t, tier, blob.EmptyDigest, nil)
}

func (s *suite) testOneByte(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	for _, b := range [][]byte{{0}, {0xff}, {'a'}} {
		d := PutBytes(t, ctx, tier, b)
		expectContent(t, tier, d, b)
	}
}

func (s *suite) testReaderShapes(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	tests := []struct {
		desc string
		wrap func(io.Reader) io.Reader
	}{
		{"one byte per Read", iotest.OneByteReader},
		{"half of each request", iotest.HalfReader},
		{"EOF with the last data", iotest.DataErrReader},
		{"one byte per Read, EOF with data", func(r io.Reader) io.Reader { return iotest.DataErrReader(iotest.OneByteReader(r)) }},
		{"plain reader (no WriterTo)", func(r io.Reader) io.Reader { return struct{ io.Reader }{r} }},
	}
	for i, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			b, d := RandomBytes(int64(1000+i), int(s.clamp(40_000+int64(i))))
			if err := tier.Put(ctx, d, int64(len(b)), tt.wrap(bytes.NewReader(b))); err != nil {
				t.Fatalf("Put = %v", err)
			}
			expectContent(t, tier, d, b)
		})
	}
}

func (s *suite) testLarge(t *testing.T) {
	if !s.fits(LargeBlobSize) {
		t.Skipf("tier declines blobs above %d bytes; not testing a %d byte blob", s.cfg.MaxBlob, LargeBlobSize)
	}
	tier := s.cfg.New(t)
	ctx := context.Background()
	d := PutRandom(t, ctx, tier, 64, LargeBlobSize)
	info, err := tier.Stat(ctx, d)
	if err != nil {
		t.Fatalf("Stat after Put = %v", err)
	}
	if info.Size != LargeBlobSize {
		t.Errorf("Stat.Size = %d, want %d", info.Size, LargeBlobSize)
	}
	got, n := StreamDigest(t, ctx, tier, d)
	if n != LargeBlobSize || got != d {
		t.Fatalf("read back %d bytes with digest %s, want %d bytes with %s", n, got, int64(LargeBlobSize), d)
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

func (s *suite) testTooLarge(t *testing.T) {
	if s.cfg.MaxBlob <= 0 {
		t.Skip("tier has no per-blob limit (Config.MaxBlob is 0)")
	}
	tier := s.cfg.New(t)
	ctx := context.Background()
	size := s.cfg.MaxBlob + 1
	// The tier must decline from the size alone, so the digest need not be
	// the content's (hashing a large blob here would only cost time).
	d := blob.FromBytes([]byte(fmt.Sprint("tiertest: too large ", size)))
	cr := &countingReader{r: randomReader(7, size)}
	err := tier.Put(ctx, d, size, cr)
	if !errors.Is(err, blob.ErrTooLarge) {
		t.Fatalf("Put of %d bytes (limit %d) = %v, want ErrTooLarge", size, s.cfg.MaxBlob, err)
	}
	if cr.n >= size {
		t.Errorf("Put read all %d bytes before declining; it must decline from the size alone", cr.n)
	}
	expectMiss(t, tier, d, "after a declined Put")
	// A blob exactly at the limit is accepted.
	if s.cfg.MaxBlob <= CancelBlobSize {
		at := PutRandom(t, ctx, tier, 8, s.cfg.MaxBlob)
		if got, n := StreamDigest(t, ctx, tier, at); got != at || n != s.cfg.MaxBlob {
			t.Errorf("blob at the limit read back as %d bytes %s, want %d bytes %s", n, got, s.cfg.MaxBlob, at)
		}
	}
}

// failingReader yields its data, then fails with err instead of io.EOF.
type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

var errInjected = errors.New("tiertest: injected read error")

func (s *suite) testPutMismatch(t *testing.T) {
	ctx := context.Background()
	content, d := RandomBytes(11, int(s.clamp(10_000)))
	other, otherD := RandomBytes(12, len(content))
	size := int64(len(content))
	tests := []struct {
		desc     string
		d        blob.Digest
		size     int64
		r        func() io.Reader
		mismatch bool // else: must fail with errInjected
		mayStore bool // the right bytes arrived before the error: storing them is allowed
	}{
		{"other content under the digest", d, size, func() io.Reader { return bytes.NewReader(other) }, true, false},
		{"one flipped byte", d, size, func() io.Reader {
			b := bytes.Clone(content)
			b[len(b)/2] ^= 1
			return bytes.NewReader(b)
		}, true, false},
		{"stream shorter than size", d, size, func() io.Reader { return bytes.NewReader(content[:size-1]) }, true, false},
		{"stream longer than size", d, size, func() io.Reader { return io.MultiReader(bytes.NewReader(content), strings.NewReader("x")) }, true, false},
		{"endless stream", d, size, func() io.Reader { return io.MultiReader(bytes.NewReader(content), endless{}) }, true, false},
		{"right bytes, declared size too small", d, size - 1, func() io.Reader { return bytes.NewReader(content) }, true, false},
		{"right bytes, declared size too big", d, size + 1, func() io.Reader { return bytes.NewReader(content) }, true, false},
		{"empty stream for a non-empty blob", d, size, func() io.Reader { return bytes.NewReader(nil) }, true, false},
		{"bytes for the empty digest", blob.EmptyDigest, 0, func() io.Reader { return strings.NewReader("x") }, true, false},
		{"reader fails before the end", d, size, func() io.Reader { return &failingReader{data: content[:size/2], err: errInjected} }, false, false},
		{"reader fails instead of EOF", d, size, func() io.Reader { return &failingReader{data: content, err: errInjected} }, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			tier := s.cfg.New(t)
			err := tier.Put(ctx, tt.d, tt.size, tt.r())
			switch {
			case err == nil && tt.mayStore:
				expectContent(t, tier, d, content)
				return
			case err == nil:
				t.Errorf("Put succeeded, want an error")
			case tt.mismatch:
				var me *blob.MismatchError
				if !errors.Is(err, blob.ErrMismatch) || !errors.As(err, &me) {
					t.Errorf("Put = %v, want a *blob.MismatchError", err)
				} else if me.Want != tt.d {
					t.Errorf("MismatchError.Want = %s, want %s", me.Want, tt.d)
				}
			case !errors.Is(err, errInjected):
				t.Errorf("Put = %v, want it to wrap the reader's error", err)
			}
			expectMiss(t, tier, tt.d, "after a rejected Put")
			expectMiss(t, tier, otherD, "after a rejected Put, the content's own digest")
			if !s.cfg.CannotList {
				n := 0
				if err := tier.Walk(ctx, func(blob.Info) error { n++; return nil }); err != nil {
					t.Errorf("Walk = %v", err)
				} else if n != 0 {
					t.Errorf("Walk lists %d blobs after a rejected Put, want 0", n)
				}
			}
			// The right content still goes in afterwards.
			if err := tier.Put(ctx, d, size, bytes.NewReader(content)); err != nil {
				t.Fatalf("correct Put after a rejected one = %v", err)
			}
			expectContent(t, tier, d, content)
		})
	}
}

// endless yields 'z' forever.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'z'
	}
	return len(p), nil
}

func (s *suite) testPutNegativeSize(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	b := []byte("negative")
	d := blob.FromBytes(b)
	if err := tier.Put(ctx, d, -1, bytes.NewReader(b)); err == nil {
		t.Errorf("Put with size -1 succeeded, want an error")
	}
	expectMiss(t, tier, d, "after Put with a negative size")
}

func (s *suite) testIdempotentPut(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	b, d := RandomBytes(21, int(s.clamp(100_000)))
	for i := range 3 {
		if err := tier.Put(ctx, d, int64(len(b)), bytes.NewReader(b)); err != nil {
			t.Fatalf("Put #%d of the same blob = %v", i+1, err)
		}
	}
	expectContent(t, tier, d, b)
	if !s.cfg.CannotList {
		n := 0
		if err := tier.Walk(ctx, func(info blob.Info) error {
			if info.Digest == d {
				n++
			}
			return nil
		}); err != nil {
			t.Fatalf("Walk = %v", err)
		}
		if n != 1 {
			t.Errorf("Walk lists the blob %d times after three Puts, want 1", n)
		}
	}
	if u, err := tier.Usage(ctx); err == nil && u.Blobs == 1 && u.Bytes != int64(len(b)) {
		t.Errorf("Usage after three Puts of one %d byte blob = %+v", len(b), u)
	}
}

func (s *suite) testConcurrent(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	size := s.clamp(ConcurrentBlobSize)
	_, d := RandomBlob(31, size)
	// check reads d fully and reports whether the bytes were right; a miss
	// is allowed only when allowMiss.
	check := func(g int, allowMiss bool) {
		rc, _, err := tier.Open(ctx, d)
		if err != nil {
			if !(allowMiss && errors.Is(err, blob.ErrNotFound)) {
				t.Errorf("goroutine %d: Open = %v", g, err)
			}
			return
		}
		defer rc.Close()
		h := sha256.New()
		n, err := io.Copy(h, rc)
		if err != nil {
			t.Errorf("goroutine %d: read after %d bytes: %v", g, n, err)
			return
		}
		if got := blob.NewDigestFromHash(h); got != d || n != size {
			t.Errorf("goroutine %d: read %d bytes with digest %s, want %d bytes with %s", g, n, got, size, d)
		}
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for g := range Goroutines {
		wg.Go(func() {
			<-start
			check(g, true) // may race the first Put
			r, _ := RandomBlob(31, size)
			if err := tier.Put(ctx, d, size, r); err != nil {
				t.Errorf("goroutine %d: Put = %v", g, err)
				return
			}
			if info, err := tier.Stat(ctx, d); err != nil || info.Size != size {
				t.Errorf("goroutine %d: Stat after Put = %+v, %v", g, info, err)
			}
			check(g, false)
		})
	}
	close(start)
	wg.Wait()
}

func (s *suite) testCancelledContext(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	stored := PutBytes(t, ctx, tier, []byte("stored before cancelling"))
	cctx, cancel := context.WithCancel(ctx)
	cancel()

	b := []byte("put with a cancelled context")
	d := blob.FromBytes(b)
	if err := tier.Put(cctx, d, int64(len(b)), bytes.NewReader(b)); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with a cancelled context = %v, want context.Canceled", err)
	}
	expectMiss(t, tier, d, "after Put with a cancelled context")

	if _, err := tier.Stat(cctx, stored); !errors.Is(err, context.Canceled) {
		t.Errorf("Stat with a cancelled context = %v, want context.Canceled", err)
	}
	rc, _, err := tier.Open(cctx, stored)
	if err == nil {
		// Opening may succeed; reading must not.
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Open and read with a cancelled context = %v, want context.Canceled", err)
	}
	expectContent(t, tier, stored, []byte("stored before cancelling"))

	// Refs and listings honour ctx too; a cancelled PutRef stores nothing.
	k := blob.RefKey{Namespace: blob.NamespaceTag, Scope: "s", Name: "cancelled"}
	if err := tier.PutRef(cctx, k, blob.Ref{Digest: stored, Size: 24}); !errors.Is(err, context.Canceled) {
		t.Errorf("PutRef with a cancelled context = %v, want context.Canceled", err)
	}
	expectNoRef(t, tier, k, "after PutRef with a cancelled context")
	putRef(t, tier, k, blob.Ref{Digest: stored, Size: 24})
	if _, err := tier.GetRef(cctx, k); !errors.Is(err, context.Canceled) {
		t.Errorf("GetRef with a cancelled context = %v, want context.Canceled", err)
	}
	if !s.cfg.CannotList {
		if err := tier.Walk(cctx, func(blob.Info) error { return nil }); !errors.Is(err, context.Canceled) {
			t.Errorf("Walk with a cancelled context = %v, want context.Canceled", err)
		}
		if err := tier.WalkRefs(cctx, "", func(blob.RefKey, blob.Ref) error { return nil }); !errors.Is(err, context.Canceled) {
			t.Errorf("WalkRefs with a cancelled context = %v, want context.Canceled", err)
		}
	}
}

func (s *suite) testOpenCancelMidStream(t *testing.T) {
	tier := s.cfg.New(t)
	size := s.clamp(CancelBlobSize)
	d := PutRandom(t, context.Background(), tier, 41, size)
	want, _ := RandomBlob(41, size)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rc, _, err := tier.Open(ctx, d)
	if err != nil {
		t.Fatalf("Open = %v", err)
	}
	defer rc.Close()
	chunk := min(int64(CancelReadSize), max(size/int64(2*ReadsAfterCancel), 1))
	buf := make([]byte, chunk)
	wantBuf := make([]byte, chunk)
	n, err := io.ReadFull(rc, buf)
	if err != nil {
		t.Fatalf("first read of %d bytes: %v", chunk, err)
	}
	io.ReadFull(want, wantBuf)
	if !bytes.Equal(buf[:n], wantBuf) {
		t.Fatalf("first %d bytes differ from the stored content", chunk)
	}
	cancel()
	for i := range ReadsAfterCancel {
		_, err := rc.Read(buf)
		if err == nil {
			continue
		}
		if err == io.EOF {
			t.Fatalf("reader reached EOF %d reads after its context was cancelled, want an error", i+1)
		}
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Read after cancel = %v, want context.Canceled", err)
		}
		return
	}
	t.Fatalf("reader still serving %d Reads of %d bytes after its context was cancelled", ReadsAfterCancel, chunk)
}

// cancellingReader streams r in chunks of at most chunk bytes and calls
// cancel once after `after` bytes; it keeps streaming afterwards, so only a
// tier that honours ctx stops.
type cancellingReader struct {
	r       io.Reader
	chunk   int
	after   int64
	n       int64
	cancel  func()
	fired   bool
	firedAt int64
}

func (c *cancellingReader) Read(p []byte) (int, error) {
	if len(p) > c.chunk {
		p = p[:c.chunk]
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	if !c.fired && c.n >= c.after {
		c.fired = true
		c.firedAt = c.n
		c.cancel()
	}
	return n, err
}

func (s *suite) testPutCancelMidStream(t *testing.T) {
	tier := s.cfg.New(t)
	size := s.clamp(CancelBlobSize)
	r, d := RandomBlob(51, size)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cr := &cancellingReader{r: r, chunk: CancelReadSize, after: size / 4, cancel: cancel}
	err := tier.Put(ctx, d, size, cr)
	if !cr.fired {
		// The tier did not read far enough to cancel: it must have failed.
		if err == nil {
			t.Fatalf("Put read %d of %d bytes and succeeded", cr.n, size)
		}
	} else if !errors.Is(err, context.Canceled) {
		t.Errorf("Put whose context was cancelled after %d of %d bytes = %v, want context.Canceled", cr.firedAt, size, err)
	}
	expectMiss(t, tier, d, "after Put cancelled mid-stream")
	// The blob can still be stored afterwards.
	PutRandom(t, context.Background(), tier, 51, size)
	if got, n := StreamDigest(t, context.Background(), tier, d); got != d || n != size {
		t.Errorf("after a cancelled Put, a full Put reads back %d bytes %s, want %d bytes %s", n, got, size, d)
	}
}

func (s *suite) testReaderClose(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	b, d := RandomBytes(61, int(s.clamp(300_000)))
	PutBytes(t, ctx, tier, b)
	tests := []struct {
		desc string
		read int // bytes to read before Close; -1 = to EOF
	}{
		{"close without reading", 0},
		{"close after a partial read", 1000},
		{"close after EOF", -1},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			rc, _, err := tier.Open(ctx, d)
			if err != nil {
				t.Fatalf("Open = %v", err)
			}
			var got []byte
			if tt.read < 0 {
				got, err = io.ReadAll(rc)
				if err == nil {
					var one [1]byte
					if n, err2 := rc.Read(one[:]); n != 0 || err2 != io.EOF {
						t.Errorf("Read after EOF = %d, %v; want 0, io.EOF", n, err2)
					}
				}
			} else {
				got = make([]byte, tt.read)
				_, err = io.ReadFull(rc, got)
			}
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if !bytes.Equal(got, b[:len(got)]) {
				t.Errorf("bytes read differ from the stored content")
			}
			if err := rc.Close(); err != nil {
				t.Errorf("Close = %v", err)
			}
		})
	}
	// Many readers open at once, closed in another order, see the same bytes.
	var rcs []io.ReadCloser
	for range 8 {
		rc, _, err := tier.Open(ctx, d)
		if err != nil {
			t.Fatalf("Open = %v", err)
		}
		rcs = append(rcs, rc)
	}
	for i := len(rcs) - 1; i >= 0; i-- {
		got, err := io.ReadAll(rcs[i])
		if err != nil || !bytes.Equal(got, b) {
			t.Errorf("reader %d: %d bytes, %v", i, len(got), err)
		}
		if err := rcs[i].Close(); err != nil {
			t.Errorf("reader %d: Close = %v", i, err)
		}
	}
}

func (s *suite) testInfo(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	if tier.Name() == "" {
		t.Errorf("Name() is empty")
	}
	b, d := RandomBytes(71, int(s.clamp(4321)))
	PutBytes(t, ctx, tier, b)
	info, err := tier.Stat(ctx, d)
	if err != nil {
		t.Fatalf("Stat = %v", err)
	}
	checkInfo(t, "Stat", info, d, int64(len(b)))
	rc, info, err := tier.Open(ctx, d)
	if err != nil {
		t.Fatalf("Open = %v", err)
	}
	rc.Close()
	checkInfo(t, "Open", info, d, int64(len(b)))
}

func checkInfo(t *testing.T, op string, info blob.Info, d blob.Digest, size int64) {
	t.Helper()
	if info.Digest != d {
		t.Errorf("%s Info.Digest = %q, want %s", op, info.Digest, d)
	}
	if info.Size != size {
		t.Errorf("%s Info.Size = %d, want %d", op, info.Size, size)
	}
	if info.Tier == "" {
		t.Errorf("%s Info.Tier is empty", op)
	}
}

func (s *suite) testDelete(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	keep := PutBytes(t, ctx, tier, []byte("keep me"))
	gone := PutBytes(t, ctx, tier, []byte("delete me"))
	err := tier.Delete(ctx, gone)
	if s.noBlobDelete() {
		if !errors.Is(err, blob.ErrUnsupported) {
			t.Fatalf("Delete on a tier that cannot delete = %v, want ErrUnsupported", err)
		}
		expectContent(t, tier, gone, []byte("delete me"))
		return
	}
	if err != nil {
		t.Fatalf("Delete = %v", err)
	}
	expectMiss(t, tier, gone, "after Delete")
	if err := tier.Delete(ctx, gone); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("second Delete = %v, want ErrNotFound", err)
	}
	expectContent(t, tier, keep, []byte("keep me"))
	// Deleted content can be stored again.
	PutBytes(t, ctx, tier, []byte("delete me"))
	expectContent(t, tier, gone, []byte("delete me"))
}

var errStop = errors.New("tiertest: stop walking")

func (s *suite) testWalk(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	if s.cfg.CannotList {
		err := tier.Walk(ctx, func(blob.Info) error { return nil })
		if !errors.Is(err, blob.ErrUnsupported) {
			t.Errorf("Walk on a tier that cannot list = %v, want ErrUnsupported", err)
		}
		return
	}
	count := 0
	if err := tier.Walk(ctx, func(blob.Info) error { count++; return nil }); err != nil || count != 0 {
		t.Fatalf("Walk of an empty tier: %d blobs, %v", count, err)
	}
	want := map[blob.Digest]int64{}
	for i, size := range []int64{0, 1, 100, 4096, 70_000} {
		b, d := RandomBytes(int64(80+i), int(s.clamp(size)))
		PutBytes(t, ctx, tier, b)
		want[d] = int64(len(b))
	}
	if !s.noBlobDelete() {
		gone := PutBytes(t, ctx, tier, []byte("walk: deleted"))
		if err := tier.Delete(ctx, gone); err != nil {
			t.Fatalf("Delete = %v", err)
		}
	}
	got := map[blob.Digest]int64{}
	err := tier.Walk(ctx, func(info blob.Info) error {
		if _, dup := got[info.Digest]; dup {
			t.Errorf("Walk lists %s twice", info.Digest)
		}
		got[info.Digest] = info.Size
		return nil
	})
	if err != nil {
		t.Fatalf("Walk = %v", err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Walk listed %v, want %v", got, want)
	}
	calls := 0
	err = tier.Walk(ctx, func(blob.Info) error { calls++; return errStop })
	if !errors.Is(err, errStop) {
		t.Errorf("Walk whose fn fails = %v, want fn's error", err)
	}
	if calls != 1 {
		t.Errorf("Walk called fn %d times after it returned an error, want 1", calls)
	}
}

func (s *suite) testCorruption(t *testing.T) {
	if s.cfg.Corrupt == nil {
		t.Skip("tier storage does not rot (Config.Corrupt is nil)")
	}
	tier := s.cfg.New(t)
	ctx := context.Background()
	b, d := RandomBytes(91, int(s.clamp(100_000)))
	PutBytes(t, ctx, tier, b)
	keep := PutBytes(t, ctx, tier, []byte("undamaged neighbour"))
	s.cfg.Corrupt(t, tier, d)

	rc, _, err := tier.Open(ctx, d)
	if err == nil {
		var got []byte
		got, err = io.ReadAll(rc)
		rc.Close()
		if err == nil {
			t.Fatalf("read a corrupted blob to EOF without an error (%d bytes, equal to the original: %v)", len(got), bytes.Equal(got, b))
		}
		if !errors.Is(err, blob.ErrMismatch) {
			t.Errorf("reading a corrupted blob = %v, want ErrMismatch", err)
		}
	} else if !blob.IsMiss(err) {
		t.Errorf("Open of a corrupted blob = %v, want a miss (ErrNotFound or ErrMismatch)", err)
	}
	expectMiss(t, tier, d, "after the corruption was detected")
	expectContent(t, tier, keep, []byte("undamaged neighbour"))
	PutBytes(t, ctx, tier, b)
	expectContent(t, tier, d, b)
}

// testConcurrentMixed runs Puts, reads, refs, deletes and listings of many
// blobs from many goroutines at once (meant to be run under -race too), then
// checks that everything that should be there is, with the right content.
func (s *suite) testConcurrentMixed(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	const workers, perWorker = 16, 8
	type item struct {
		b []byte
		d blob.Digest
	}
	items := make([][]item, workers)
	for w := range workers {
		for i := range perWorker {
			b, d := RandomBytes(int64(2000+w*perWorker+i), int(s.clamp(int64(500*(i+1)))))
			items[w] = append(items[w], item{b, d})
		}
	}
	refKey := func(w, i int) blob.RefKey {
		return blob.RefKey{Namespace: "mixed", Scope: fmt.Sprint("worker-", w), Name: fmt.Sprint(i)}
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i, it := range items[w] {
				if err := tier.Put(ctx, it.d, int64(len(it.b)), bytes.NewReader(it.b)); err != nil {
					t.Errorf("worker %d: Put = %v", w, err)
					return
				}
				if err := tier.PutRef(ctx, refKey(w, i), blob.Ref{Digest: it.d, Size: int64(len(it.b))}); err != nil {
					t.Errorf("worker %d: PutRef = %v", w, err)
				}
				// Read a neighbour's blob: absent or exactly right.
				other := items[(w+1)%workers][i]
				if rc, _, err := tier.Open(ctx, other.d); err == nil {
					got, err := io.ReadAll(rc)
					rc.Close()
					if err != nil || !bytes.Equal(got, other.b) {
						t.Errorf("worker %d: neighbour's blob read %d bytes, %v", w, len(got), err)
					}
				} else if !errors.Is(err, blob.ErrNotFound) {
					t.Errorf("worker %d: Open of neighbour's blob = %v", w, err)
				}
				if _, err := tier.GetRef(ctx, refKey((w+1)%workers, i)); err != nil && !errors.Is(err, blob.ErrNotFound) {
					t.Errorf("worker %d: GetRef of neighbour's ref = %v", w, err)
				}
				if !s.cfg.CannotList && i%4 == 0 {
					if err := tier.Walk(ctx, func(blob.Info) error { return nil }); err != nil {
						t.Errorf("worker %d: Walk = %v", w, err)
					}
					if err := tier.WalkRefs(ctx, "mixed", func(blob.RefKey, blob.Ref) error { return nil }); err != nil {
						t.Errorf("worker %d: WalkRefs = %v", w, err)
					}
				}
			}
			// Each worker deletes its last blob again.
			if !s.noBlobDelete() {
				last := items[w][perWorker-1]
				if err := tier.Delete(ctx, last.d); err != nil {
					t.Errorf("worker %d: Delete = %v", w, err)
				}
			}
		})
	}
	wg.Wait()
	for w := range workers {
		for i, it := range items[w] {
			if i == perWorker-1 && !s.noBlobDelete() {
				if s.cfg.DeleteRacesReads {
					// A neighbour's read may have brought it back: then
					// intact, and a Delete without readers removes it.
					if _, err := tier.Stat(ctx, it.d); err == nil {
						expectContent(t, tier, it.d, it.b)
						if err := tier.Delete(ctx, it.d); err != nil {
							t.Errorf("Delete with no read under way = %v", err)
						}
					}
				}
				expectMiss(t, tier, it.d, "blob deleted by its worker")
				continue
			}
			expectContent(t, tier, it.d, it.b)
			expectRef(t, tier, refKey(w, i), blob.Ref{Digest: it.d, Size: int64(len(it.b))})
		}
	}
}
