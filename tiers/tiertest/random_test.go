package tiertest_test

import (
	"bytes"
	"io"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers/tiertest"
)

func TestRandomBlob(t *testing.T) {
	tests := []struct {
		desc string
		seed int64
		size int64
	}{
		{"empty", 1, 0},
		{"one byte", 1, 1},
		{"not a multiple of the generator's block", 2, 1000_003},
		{"negative seed", -5, 4096},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			r1, d1 := tiertest.RandomBlob(tt.seed, tt.size)
			r2, d2 := tiertest.RandomBlob(tt.seed, tt.size) // cached digest
			b1, err := io.ReadAll(r1)
			if err != nil {
				t.Fatal(err)
			}
			b2, _ := io.ReadAll(r2)
			if int64(len(b1)) != tt.size || !bytes.Equal(b1, b2) {
				t.Fatalf("two readers for one seed gave %d and %d bytes, equal %v", len(b1), len(b2), bytes.Equal(b1, b2))
			}
			if d1 != d2 || d1 != blob.FromBytes(b1) {
				t.Errorf("digests %s, %s; content hashes to %s", d1, d2, blob.FromBytes(b1))
			}
			b3, d3 := tiertest.RandomBytes(tt.seed, int(tt.size))
			if !bytes.Equal(b3, b1) || d3 != d1 {
				t.Errorf("RandomBytes differs from RandomBlob")
			}
		})
	}
	if _, a := tiertest.RandomBlob(1, 100); a == blob.FromBytes(make([]byte, 100)) {
		t.Error("RandomBlob yields zeros")
	}
	_, a := tiertest.RandomBlob(1, 100)
	_, b := tiertest.RandomBlob(2, 100)
	if a == b {
		t.Error("different seeds give the same content")
	}
	// A prefix of a longer blob is the shorter blob: sizes share a stream.
	long, _ := tiertest.RandomBytes(3, 200)
	short, _ := tiertest.RandomBytes(3, 100)
	if !bytes.Equal(long[:100], short) {
		t.Error("RandomBytes(seed, 100) is not a prefix of RandomBytes(seed, 200)")
	}
	defer func() {
		if recover() == nil {
			t.Error("RandomBlob with a negative size did not panic")
		}
	}()
	tiertest.RandomBlob(1, -1)
}
