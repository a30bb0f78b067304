package blob_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"testing"

	"github.com/strata-oci/strata/blob"
)

// claims is a reader that claims to verify blob d of size n, whatever it
// yields: it stands for a VerifiedReader, to show what a Verifier trusts.
type claims struct {
	io.Reader
	d blob.Digest
	n int64
}

func (c claims) VerifiedBlob() (blob.Digest, int64) { return c.d, c.n }

func TestVerifierTrustsAVerifiedReaderOfTheSameBlob(t *testing.T) {
	good := []byte("the blob")
	d, n := blob.FromBytes(good), int64(len(good))
	other := []byte("not it!!") // same length, other bytes

	// Inner Verifier of the same blob: the outer does not hash again, so a
	// mismatch is the inner's to find, and it is reported once, as the
	// outer's (its callback runs).
	var called int
	inner := blob.NewVerifier(bytes.NewReader(other), d, n, nil)
	outer := blob.NewVerifier(inner, d, n, func(error) { called++ })
	if _, err := io.ReadAll(outer); !errors.Is(err, blob.ErrMismatch) || called != 1 {
		t.Fatalf("wrong bytes under a trusted verifier: err %v, callback %d times; want a mismatch reported once", err, called)
	}
	if got, err := io.ReadAll(blob.NewVerifier(blob.NewVerifier(bytes.NewReader(good), d, n, nil), d, n, nil)); err != nil || !bytes.Equal(got, good) {
		t.Fatalf("good bytes: %q, %v", got, err)
	}

	// What trusting means: a reader that claims the blob is not hashed.
	if _, err := io.ReadAll(blob.NewVerifier(claims{bytes.NewReader(other), d, n}, d, n, nil)); err != nil {
		t.Fatalf("a claimed blob was hashed again: %v", err)
	}
	// Its byte count is still checked.
	if _, err := io.ReadAll(blob.NewVerifier(claims{bytes.NewReader(append(other, 'x')), d, n}, d, n, nil)); !errors.Is(err, blob.ErrMismatch) {
		t.Fatalf("an overlong trusted stream: %v, want a mismatch", err)
	}
	if _, err := io.ReadAll(blob.NewVerifier(claims{bytes.NewReader(other[1:]), d, n}, d, n, nil)); !errors.Is(err, blob.ErrMismatch) {
		t.Fatalf("a short trusted stream: %v, want a mismatch", err)
	}
}

func TestVerifierHashesWhatItCannotTrust(t *testing.T) {
	good := []byte("the blob")
	d, n := blob.FromBytes(good), int64(len(good))
	other := []byte("not it!!")
	for name, r := range map[string]io.Reader{
		"claims another digest":      claims{bytes.NewReader(other), blob.FromBytes(other), n},
		"claims another size":        claims{bytes.NewReader(other), d, n + 1},
		"claims no size, we know it": claims{bytes.NewReader(other), d, -1},
		"claims nothing":             claims{bytes.NewReader(other), "", -1},
		"plain reader":               bytes.NewReader(other),
	} {
		if _, err := io.ReadAll(blob.NewVerifier(r, d, n, nil)); !errors.Is(err, blob.ErrMismatch) {
			t.Errorf("%s: %v, want a mismatch (the bytes must be hashed)", name, err)
		}
	}
	// An outer Verifier that does not know the size trusts an inner one
	// that checks both.
	if _, err := io.ReadAll(blob.NewVerifier(claims{bytes.NewReader(other), d, n}, d, -1, nil)); err != nil {
		t.Fatalf("size-less outer over a verifying inner: %v", err)
	}
	if d2, n2 := blob.VerifiedBlobOf(bytes.NewReader(good)); d2 != "" || n2 != -1 {
		t.Fatalf("VerifiedBlobOf(plain) = %q, %d", d2, n2)
	}
	if d2, n2 := blob.VerifiedBlobOf(blob.NewVerifier(bytes.NewReader(good), d, n, nil)); d2 != d || n2 != n {
		t.Fatalf("VerifiedBlobOf(Verifier) = %q, %d", d2, n2)
	}
}

// breaks yields r's bytes, then fails with err instead of io.EOF.
type breaks struct {
	r   io.Reader
	err error
}

func (b breaks) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		err = b.err
	}
	return n, err
}

// TestVerifierPrefixState: a Verifier tells the sha256 state of exactly
// the bytes it passed on (after any chunking, after its source failed,
// after an overlong stream, at the end), as a copy its caller may write
// into without changing the Verifier; a trusting Verifier forwards its
// reader's state, or says it has none.
func TestVerifierPrefixState(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 1000) // 16000 bytes
	d, n := blob.FromBytes(data), int64(len(data))
	sumOf := func(b []byte) []byte { s := sha256.Sum256(b); return s[:] }
	check := func(desc string, v io.Reader, want []byte) {
		t.Helper()
		h, k := blob.PrefixStateOf(v)
		if h == nil || k != int64(len(want)) || !bytes.Equal(h.Sum(nil), sumOf(want)) {
			t.Errorf("%s: PrefixState = %v, %d; want the hash of the first %d bytes", desc, h, k, len(want))
			return
		}
		h.Write([]byte("more")) // the caller's copy
	}

	for _, chunk := range []int{1, 7, 4096, 1 << 20} {
		v := blob.NewVerifier(bytes.NewReader(data), d, n, nil)
		check("before any read", v, nil)
		buf := make([]byte, chunk)
		var got []byte
		for {
			k, err := v.Read(buf)
			got = append(got, buf[:k]...)
			check("during the stream", v, got)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%d-byte reads: %v", chunk, err)
			}
		}
		if !v.Verified() {
			t.Fatalf("%d-byte reads: not verified after the callers' copies were written to", chunk)
		}
		check("at the end", v, data)
	}

	// The source fails midway: the state is that of what was passed on.
	fail := errors.New("reset")
	v := blob.NewVerifier(breaks{bytes.NewReader(data[:5000]), fail}, d, n, nil)
	if got, err := io.ReadAll(v); !errors.Is(err, fail) || len(got) != 5000 {
		t.Fatalf("broken source: %d bytes, %v", len(got), err)
	}
	check("after the source failed", v, data[:5000])

	// Overlong: the read that shows it (the byte past the size and the
	// bytes read with it) is neither passed on nor hashed.
	for _, chunk := range []int{1, 3000, 1 << 20} {
		v = blob.NewVerifier(bytes.NewReader(append(bytes.Clone(data), 'x')), d, n, nil)
		var got []byte
		buf := make([]byte, chunk)
		var err error
		for err == nil {
			var k int
			k, err = v.Read(buf)
			got = append(got, buf[:k]...)
		}
		if !errors.Is(err, blob.ErrMismatch) || !bytes.HasPrefix(data, got) {
			t.Fatalf("overlong source, %d-byte reads: %d bytes, %v", chunk, len(got), err)
		}
		check("after an overlong stream", v, got)
	}

	// A trusting Verifier forwards its reader's state...
	inner := blob.NewVerifier(bytes.NewReader(data), d, n, nil)
	outer := blob.NewVerifier(inner, d, n, nil)
	if _, err := io.CopyN(io.Discard, outer, 777); err != nil {
		t.Fatal(err)
	}
	check("trusting a Verifier", outer, data[:777])
	// ...and has none when its reader has none.
	outer = blob.NewVerifier(claims{bytes.NewReader(data), d, n}, d, n, nil)
	if _, err := io.CopyN(io.Discard, outer, 777); err != nil {
		t.Fatal(err)
	}
	if h, k := blob.PrefixStateOf(outer); h != nil || k != 0 {
		t.Errorf("trusting a reader without a prefix state: PrefixState = %v, %d; want nil, 0", h, k)
	}
	if h, k := blob.PrefixStateOf(bytes.NewReader(data)); h != nil || k != 0 {
		t.Errorf("PrefixStateOf(plain reader) = %v, %d; want nil, 0", h, k)
	}
}
