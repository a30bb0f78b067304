package blob_test

import (
	"bytes"
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
