package memory_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"runtime"
	"testing"
	"testing/iotest"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers/memory"
	"github.com/strata-oci/strata/tiers/tiertest"
)

// TestPutExtremeDeclaredSizes: under a tier configured without a practical
// limit, a Put whose declared size is far larger than its stream fails
// with a mismatch and stores nothing; the declared size is never allocated
// up front (2^63-1 bytes cannot be).
func TestPutExtremeDeclaredSizes(t *testing.T) {
	ctx := context.Background()
	content, d := tiertest.RandomBytes(7, 3000)
	tests := []struct {
		desc string
		size int64
		ok   bool
	}{
		{desc: "2^63-1", size: math.MaxInt64},
		{desc: "2^63-2", size: math.MaxInt64 - 1},
		{desc: "1 TiB", size: 1 << 40},
		{desc: "one byte long", size: int64(len(content)) + 1},
		{desc: "one byte short", size: int64(len(content)) - 1},
		{desc: "zero", size: 0},
		{desc: "exact", size: int64(len(content)), ok: true},
	}
	for _, tc := range tests {
		for _, src := range []struct {
			name string
			r    func() io.Reader
		}{
			{"whole reads", func() io.Reader { return bytes.NewReader(content) }},
			{"one-byte reads", func() io.Reader { return iotest.OneByteReader(bytes.NewReader(content)) }},
			{"data with EOF", func() io.Reader { return iotest.DataErrReader(bytes.NewReader(content)) }},
		} {
			t.Run(tc.desc+", "+src.name, func(t *testing.T) {
				tier := newTier(t, memory.Config{Budget: math.MaxInt64, MaxBlob: math.MaxInt64})
				err := tier.Put(ctx, d, tc.size, src.r())
				if tc.ok {
					if err != nil {
						t.Fatalf("Put: %v", err)
					}
					rc, _, err := tier.Open(ctx, d)
					if err != nil {
						t.Fatal(err)
					}
					got, _ := io.ReadAll(rc)
					if !bytes.Equal(got, content) {
						t.Fatalf("stored %d bytes, want the %d put", len(got), len(content))
					}
					return
				}
				if !errors.Is(err, blob.ErrMismatch) {
					t.Fatalf("Put declared %d bytes of a %d-byte stream: %v, want a mismatch", tc.size, len(content), err)
				}
				if _, err := tier.Stat(ctx, d); !errors.Is(err, blob.ErrNotFound) {
					t.Fatalf("Stat after a failed Put: %v", err)
				}
			})
		}
	}
}

// TestPutMemoryFollowsTheStream: a source that declares the per-blob limit
// (64 MiB) and sends a few KiB costs memory in proportion to what it sent,
// not to what it declared.
func TestPutMemoryFollowsTheStream(t *testing.T) {
	ctx := context.Background()
	tier := newTier(t, memory.Config{})
	content, _ := tiertest.RandomBytes(8, 4096)
	d := blob.FromBytes([]byte("the blob that was declared"))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	err := tier.Put(ctx, d, memory.DefaultMaxBlob, bytes.NewReader(content))
	runtime.ReadMemStats(&after)
	if !errors.Is(err, blob.ErrMismatch) {
		t.Fatalf("Put: %v, want a mismatch", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 8<<20 {
		t.Fatalf("a Put that received %d bytes allocated %d bytes", len(content), n)
	}
}
