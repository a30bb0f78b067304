package ctxio_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/strata-oci/strata/internal/ctxio"
)

type digest string

// verified is a reader that says it verifies blob d of size n.
type verified struct {
	io.Reader
	d digest
	n int64
}

func (v verified) VerifiedBlob() (digest, int64) { return v.d, v.n }

func TestReaderStopsWhenContextDone(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r := ctxio.NewReader[digest](ctx, strings.NewReader("abcdef"))
	p := make([]byte, 3)
	if n, err := r.Read(p); n != 3 || err != nil || string(p) != "abc" {
		t.Fatalf("Read before cancel = %d, %v (%q), want 3 bytes", n, err, p[:n])
	}
	cancel()
	if n, err := r.Read(p); n != 0 || !errors.Is(err, context.Canceled) {
		t.Fatalf("Read after cancel = %d, %v; want 0, context.Canceled", n, err)
	}
}

func TestReaderForwardsVerifiedBlob(t *testing.T) {
	for _, tc := range []struct {
		desc  string
		inner io.Reader
		wantD digest
		wantN int64
	}{
		{"a verifying reader's blob is forwarded", verified{strings.NewReader("x"), "sha256:aa", 1}, "sha256:aa", 1},
		{"a plain reader verifies nothing", strings.NewReader("x"), "", -1},
	} {
		r := ctxio.NewReader[digest](context.Background(), tc.inner)
		if d, n := r.VerifiedBlob(); d != tc.wantD || n != tc.wantN {
			t.Errorf("%s: VerifiedBlob = %q, %d; want %q, %d", tc.desc, d, n, tc.wantD, tc.wantN)
		}
	}
}
