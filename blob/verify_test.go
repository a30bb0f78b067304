package blob_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math"
	"testing"

	"github.com/strata-oci/strata/blob"
)

// extremeSizes are declared sizes at the edges of int64, which a manifest,
// a registry or a tier index can hand a Verifier.
var extremeSizes = []int64{0, -1, math.MinInt64, math.MaxInt64, math.MaxInt64 - 1, math.MaxInt64 / 2, 1 << 40}

// TestVerifierExtremeDeclaredSizes: whatever size a Verifier is told to
// expect, reading a short stream through it ends in a *MismatchError (or,
// for an unknown size, the digest check), never in a panic; the stream is
// passed through unchanged up to that point.
func TestVerifierExtremeDeclaredSizes(t *testing.T) {
	data := []byte("eight b!")
	d := blob.FromBytes(data)
	tests := []struct {
		desc    string
		size    int64
		trusted bool // the source claims to verify (d, size) itself
		ok      bool
	}{
		{desc: "MaxInt64", size: math.MaxInt64},
		{desc: "MaxInt64-1", size: math.MaxInt64 - 1},
		{desc: "MaxInt64 over a trusted reader of the same size", size: math.MaxInt64, trusted: true},
		{desc: "half the int64 range", size: math.MaxInt64 / 2},
		{desc: "1 TiB", size: 1 << 40},
		{desc: "zero", size: 0},
		{desc: "one short", size: int64(len(data)) - 1},
		{desc: "one long", size: int64(len(data)) + 1},
		{desc: "exact", size: int64(len(data)), ok: true},
		{desc: "unknown (-1)", size: -1, ok: true},
		{desc: "MinInt64 (unknown)", size: math.MinInt64, ok: true},
	}
	for _, tc := range tests {
		for _, bufSize := range []int{1, 7, 8, 9, 64 << 10} {
			var src io.Reader = bytes.NewReader(data)
			if tc.trusted {
				src = claims{src, d, tc.size}
			}
			v := blob.NewVerifier(src, d, tc.size, nil)
			var got []byte
			var err error
			buf := make([]byte, bufSize)
			for {
				var n int
				n, err = v.Read(buf)
				got = append(got, buf[:n]...)
				if err != nil {
					break
				}
			}
			if tc.ok {
				if err != io.EOF || !bytes.Equal(got, data) {
					t.Errorf("%s, %d-byte reads: got %q, %v; want the blob and io.EOF", tc.desc, bufSize, got, err)
				}
				continue
			}
			var me *blob.MismatchError
			if !errors.As(err, &me) || me.WantSize != tc.size || me.Want != d {
				t.Errorf("%s, %d-byte reads: err %v; want a *MismatchError for %s of %d bytes", tc.desc, bufSize, err, d, tc.size)
			}
			if int64(len(got)) > int64(len(data)) || !bytes.HasPrefix(data, got) {
				t.Errorf("%s, %d-byte reads: passed %q through, want a prefix of %q", tc.desc, bufSize, got, data)
			}
		}
	}
}

// TestVerifierEndlessStreamAtHugeSize: an endless source under a size near
// MaxInt64 is passed through (it has not yet exceeded the size) with every
// Read filling the caller's buffer, without the limit arithmetic wrapping.
func TestVerifierEndlessStreamAtHugeSize(t *testing.T) {
	for _, size := range []int64{math.MaxInt64, math.MaxInt64 - 1, math.MaxInt64 - (1 << 20)} {
		v := blob.NewVerifier(infinite{}, blob.FromBytes([]byte("x")), size, nil)
		buf := make([]byte, 1<<20)
		for i := 0; i < 4; i++ {
			n, err := v.Read(buf)
			if err != nil || n != len(buf) {
				t.Fatalf("size %d, read %d: %d bytes, %v; want a full buffer", size, i, n, err)
			}
		}
		if v.N() != 4<<20 {
			t.Fatalf("size %d: N() = %d, want %d", size, v.N(), 4<<20)
		}
	}
}

// FuzzVerifier reads data through a Verifier told to expect size bytes
// (extreme sizes seeded), in reads of chunk bytes, over a plain or a
// trusted source. It must never panic; it succeeds exactly when the size is
// unknown or right and the digest is data's; it passes through only a
// prefix of data; and any failure is a *MismatchError naming the declared
// size.
func FuzzVerifier(f *testing.F) {
	for _, size := range extremeSizes {
		for _, data := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("ab"), 5000)} {
			f.Add(data, size, uint16(0), false, false)
			f.Add(data, size, uint16(1), true, false)
			f.Add(data, size, uint16(4096), false, true)
		}
	}
	f.Add([]byte("exact"), int64(5), uint16(2), false, false)
	f.Fuzz(func(t *testing.T, data []byte, size int64, chunk uint16, trusted, otherDigest bool) {
		d := blob.FromBytes(data)
		if otherDigest {
			d = blob.FromBytes(append([]byte("other:"), data...))
		}
		var src io.Reader = bytes.NewReader(data)
		if trusted {
			// A trusted source claims (d, size); its content is what the
			// Verifier cannot see, so compare only counts below.
			src = claims{src, d, size}
		}
		v := blob.NewVerifier(src, d, size, nil)
		buf := make([]byte, int(chunk)+1)
		var got []byte
		var err error
		for i := 0; ; i++ {
			var n int
			n, err = v.Read(buf)
			if n < 0 || n > len(buf) {
				t.Fatalf("Read returned %d for a %d-byte buffer", n, len(buf))
			}
			got = append(got, buf[:n]...)
			if err != nil {
				break
			}
			if i > len(data)+2 {
				t.Fatalf("no end after %d reads of %d bytes", i, len(data))
			}
		}
		if !bytes.HasPrefix(data, got) {
			t.Fatalf("passed %d bytes through that are not a prefix of the source", len(got))
		}
		if h, k := v.PrefixState(); trusted {
			if h != nil {
				t.Fatalf("a Verifier trusting a reader without a prefix state gave one")
			}
		} else if want := sha256.Sum256(got); h == nil || k != int64(len(got)) || !bytes.Equal(h.Sum(nil), want[:]) {
			t.Fatalf("PrefixState = %v, %d; want the hash of the %d bytes passed through", h, k, len(got))
		}
		sizeOK := size < 0 || size == int64(len(data))
		// A trusted source checks the digest itself (claims does not).
		digestOK := trusted || !otherDigest
		if sizeOK && digestOK {
			if err != io.EOF || !bytes.Equal(got, data) || !v.Verified() {
				t.Fatalf("good stream: %d bytes, %v, verified %v", len(got), err, v.Verified())
			}
			return
		}
		var me *blob.MismatchError
		if !errors.As(err, &me) || me.WantSize != size {
			t.Fatalf("bad stream (size %d, %d bytes, other digest %v): %v; want a *MismatchError for size %d", size, len(data), otherDigest, err, size)
		}
		if size >= 0 && v.N()-1 > size {
			t.Fatalf("read %d bytes under a size of %d: more than one past it", v.N(), size)
		}
		if _, again := v.Read(buf); again != err {
			t.Fatalf("error not sticky: %v then %v", err, again)
		}
	})
}
