package registry_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry"
)

// TestBlobStreamIsAPrefixHasher: a blob stream verifies itself and tells
// the hash of the bytes it yielded, so a tier stack filling from the
// registry hashes them once (blob.PrefixHasher).
func TestBlobStreamIsAPrefixHasher(t *testing.T) {
	host := registrytest.InProcess(t)
	data := registrytest.RandomBytes(t, 3<<20)
	d := blob.Digest(registrytest.PushBlob(t, host, "app", data, nil).String())
	ref, err := registry.ParseReference(host + "/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	r := newClient(t, nil)
	rc, err := r.c.Blob(context.Background(), ref.Repo(), d, int64(len(data)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if vd, vn := blob.VerifiedBlobOf(rc); vd != d || vn != int64(len(data)) {
		t.Fatalf("VerifiedBlobOf = %s, %d; want %s, %d", vd, vn, d, len(data))
	}
	var read int64
	for _, k := range []int64{0, 1, 1<<20 + 17, int64(len(data))} {
		n, err := io.CopyN(io.Discard, rc, k-read)
		read += n
		if err != nil {
			t.Fatal(err)
		}
		h, got := blob.PrefixStateOf(rc)
		want := sha256.Sum256(data[:k])
		if h == nil || got != k || !bytes.Equal(h.Sum(nil), want[:]) {
			t.Fatalf("PrefixStateOf after %d bytes = %v, %d; want the hash of those bytes", k, h, got)
		}
	}
}
