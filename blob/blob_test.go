package blob_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/strata-oci/strata/blob"
)

func TestParseDigest(t *testing.T) {
	good := blob.FromBytes([]byte("x"))
	tests := []struct {
		desc string
		in   string
		ok   bool
	}{
		{"sha256 digest", string(good), true},
		{"empty", "", false},
		{"no algorithm", good.Encoded(), false},
		{"sha512 rejected", "sha512:" + strings.Repeat("a", 128), false},
		{"short hex", "sha256:abcd", false},
		{"uppercase hex", "sha256:" + strings.ToUpper(good.Encoded()), false},
		{"path traversal", "sha256:../../etc/passwd", false},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			_, err := blob.ParseDigest(tt.in)
			if tt.ok && err != nil {
				t.Fatalf("ParseDigest(%q) = %v, want ok", tt.in, err)
			}
			if !tt.ok && !errors.Is(err, blob.ErrInvalidDigest) {
				t.Fatalf("ParseDigest(%q) = %v, want ErrInvalidDigest", tt.in, err)
			}
		})
	}
}

func TestVerifier(t *testing.T) {
	data := []byte("hello, strata")
	d := blob.FromBytes(data)
	tests := []struct {
		desc    string
		content []byte
		size    int64
		wantErr bool
	}{
		{"match", data, int64(len(data)), false},
		{"unknown size, match", data, -1, false},
		{"short", data[:5], int64(len(data)), true},
		{"long", append(append([]byte{}, data...), 'x'), int64(len(data)), true},
		{"flipped byte", append([]byte{'H'}, data[1:]...), int64(len(data)), true},
		{"unknown size, wrong content", []byte("nope"), -1, true},
		{"empty blob", nil, 0, true}, // d is not the empty digest
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			var reported error
			calls := 0
			v := blob.NewVerifier(iotest.OneByteReader(bytes.NewReader(tt.content)), d, tt.size, func(err error) { reported = err; calls++ })
			got, err := io.ReadAll(v)
			if tt.wantErr {
				var me *blob.MismatchError
				if !errors.As(err, &me) || !errors.Is(err, blob.ErrMismatch) {
					t.Fatalf("err = %v, want *MismatchError", err)
				}
				if me.Want != d {
					t.Errorf("Want = %s, want %s", me.Want, d)
				}
				if calls != 1 || reported != err {
					t.Errorf("onMismatch called %d times with %v", calls, reported)
				}
				if v.Verified() {
					t.Error("Verified() = true after mismatch")
				}
				// Sticky.
				if _, err2 := v.Read(make([]byte, 1)); err2 != err {
					t.Errorf("second Read err = %v, want sticky %v", err2, err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, data) || !v.Verified() {
				t.Fatalf("ReadAll = %q, %v; Verified=%v", got, err, v.Verified())
			}
		})
	}
}

func TestVerifierEmptyBlob(t *testing.T) {
	v := blob.NewVerifier(bytes.NewReader(nil), blob.EmptyDigest, 0, nil)
	if b, err := io.ReadAll(v); err != nil || len(b) != 0 || !v.Verified() {
		t.Fatalf("empty blob: %q %v %v", b, err, v.Verified())
	}
}

func TestVerifierStopsOverlongStream(t *testing.T) {
	// An endless stream must be cut off right after the expected size.
	v := blob.NewVerifier(infinite{}, blob.FromBytes([]byte("ab")), 2, nil)
	n, err := io.Copy(io.Discard, v)
	if !errors.Is(err, blob.ErrMismatch) || n > 3 {
		t.Fatalf("copied %d bytes, err %v; want mismatch after at most 3 bytes", n, err)
	}
}

type infinite struct{}

func (infinite) Read(p []byte) (int, error) { return len(p), nil }

func TestCopy(t *testing.T) {
	data := bytes.Repeat([]byte("z"), 1<<20)
	d := blob.FromBytes(data)
	var buf bytes.Buffer
	if n, err := blob.Copy(&buf, bytes.NewReader(data), d, int64(len(data))); err != nil || n != int64(len(data)) {
		t.Fatalf("Copy = %d, %v", n, err)
	}
	if _, err := blob.Copy(io.Discard, bytes.NewReader(data[1:]), d, int64(len(data))); !errors.Is(err, blob.ErrMismatch) {
		t.Fatalf("short Copy err = %v, want mismatch", err)
	}
}

func TestRefKeyEncodingIsInjective(t *testing.T) {
	keys := []blob.RefKey{
		{Namespace: "tag", Scope: "a/b", Name: "c"},
		{Namespace: "tag", Scope: "a", Name: "b/c"},
		{Namespace: "tag", Scope: "", Name: "a/b/c"},
		{Namespace: "tag", Scope: "a%2Fb", Name: "c"},
	}
	seen := map[string]blob.RefKey{}
	for _, k := range keys {
		s := k.String()
		if prev, dup := seen[s]; dup {
			t.Fatalf("%+v and %+v both encode to %q", prev, k, s)
		}
		seen[s] = k
		back, err := blob.ParseRefKey(s)
		if err != nil || back != k {
			t.Fatalf("ParseRefKey(%q) = %+v, %v; want %+v", s, back, err, k)
		}
	}
}

func TestRefKeyValidate(t *testing.T) {
	tests := []struct {
		desc string
		k    blob.RefKey
		ok   bool
	}{
		{"full", blob.RefKey{Namespace: "tag", Scope: "t1", Name: "x"}, true},
		{"global scope", blob.RefKey{Namespace: "tag", Name: "x"}, true},
		{"no namespace", blob.RefKey{Name: "x"}, false},
		{"no name", blob.RefKey{Namespace: "tag"}, false},
		{"NUL", blob.RefKey{Namespace: "tag", Name: "a\x00b"}, false},
		{"too long", blob.RefKey{Namespace: "tag", Name: strings.Repeat("n", blob.MaxRefKeyLen)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			err := tt.k.Validate()
			if tt.ok != (err == nil) || (!tt.ok && !errors.Is(err, blob.ErrInvalidRef)) {
				t.Fatalf("Validate() = %v, ok want %v", err, tt.ok)
			}
		})
	}
}

func TestRefExpired(t *testing.T) {
	now := time.Now()
	if (blob.Ref{}).Expired(now) {
		t.Error("zero expiry must never expire")
	}
	if !(blob.Ref{Expires: now}).Expired(now) {
		t.Error("ref expiring now must be expired")
	}
	if (blob.Ref{Expires: now.Add(time.Second)}).Expired(now) {
		t.Error("future expiry reported expired")
	}
}

func FuzzParseDigest(f *testing.F) {
	f.Add(string(blob.EmptyDigest))
	f.Add("sha256:")
	f.Add("sha512:abc")
	f.Fuzz(func(t *testing.T, s string) {
		d, err := blob.ParseDigest(s)
		if err == nil && (d.Algorithm() != blob.Algorithm || len(d.Encoded()) != 64) {
			t.Fatalf("accepted %q", s)
		}
	})
}
