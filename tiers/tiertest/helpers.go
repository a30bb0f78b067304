package tiertest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"testing"

	"github.com/strata-oci/strata/blob"
)

// PutBytes stores b in tier and returns its digest; it fails t on error.
func PutBytes(t testing.TB, ctx context.Context, tier blob.Tier, b []byte) blob.Digest {
	t.Helper()
	d := blob.FromBytes(b)
	if err := tier.Put(ctx, d, int64(len(b)), bytes.NewReader(b)); err != nil {
		t.Fatalf("Put(%s, %d bytes) = %v", d, len(b), err)
	}
	return d
}

// PutRandom streams RandomBlob(seed, size) into tier and returns its digest;
// it fails t on error.
func PutRandom(t testing.TB, ctx context.Context, tier blob.Tier, seed, size int64) blob.Digest {
	t.Helper()
	r, d := RandomBlob(seed, size)
	if err := tier.Put(ctx, d, size, r); err != nil {
		t.Fatalf("Put(%s, %d bytes) = %v", d, size, err)
	}
	return d
}

// ReadAll opens d in tier and returns its whole content; it fails t if Open,
// a Read or Close fails, or if the Info from Open disagrees with the bytes.
func ReadAll(t testing.TB, ctx context.Context, tier blob.Tier, d blob.Digest) []byte {
	t.Helper()
	rc, info, err := tier.Open(ctx, d)
	if err != nil {
		t.Fatalf("Open(%s) = %v", d, err)
	}
	b, err := io.ReadAll(rc)
	if cerr := rc.Close(); cerr != nil {
		t.Errorf("Close of reader for %s = %v", d, cerr)
	}
	if err != nil {
		t.Fatalf("reading %s: %v", d, err)
	}
	if info.Size != int64(len(b)) {
		t.Errorf("Open(%s) Info.Size = %d, read %d bytes", d, info.Size, len(b))
	}
	return b
}

// StreamDigest opens d in tier, hashes the stream without keeping it, and
// returns the digest and length of what was read; it fails t if Open, a Read
// or Close fails.
func StreamDigest(t testing.TB, ctx context.Context, tier blob.Tier, d blob.Digest) (blob.Digest, int64) {
	t.Helper()
	rc, _, err := tier.Open(ctx, d)
	if err != nil {
		t.Fatalf("Open(%s) = %v", d, err)
	}
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if cerr := rc.Close(); cerr != nil {
		t.Errorf("Close of reader for %s = %v", d, cerr)
	}
	if err != nil {
		t.Fatalf("reading %s after %d bytes: %v", d, n, err)
	}
	return blob.NewDigestFromHash(h), n
}
