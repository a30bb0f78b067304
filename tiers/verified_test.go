package tiers_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/tiertest"
)

// seesPut is a real tier that records what its Puts were handed: whether
// the reader was a blob.VerifiedReader, and of which blob.
type seesPut struct {
	blob.Tier
	mu       sync.Mutex
	verified []blob.Digest
}

func (s *seesPut) Put(ctx context.Context, d blob.Digest, size int64, r io.Reader) error {
	vd, vn := blob.VerifiedBlobOf(r)
	if vn != size {
		vd = ""
	}
	s.mu.Lock()
	s.verified = append(s.verified, vd)
	s.mu.Unlock()
	return s.Tier.Put(ctx, d, size, r)
}

// The stack verifies a stream once and hands its tiers a stream they may
// trust, both when it fills tiers from a lower one and in Put; a source
// that lies is still caught by the stack's own verification.
func TestStackHandsTiersAVerifiedStream(t *testing.T) {
	ctx := context.Background()
	want, _ := tiertest.RandomBytes(3, 1<<20+5) // over the tee's small-blob size
	d := blob.FromBytes(want)

	top := &seesPut{Tier: newMem(t, "top", 0)}
	mid := &seesPut{Tier: newMem(t, "mid", 0)}
	bottom := newMem(t, "bottom", 0)
	if err := bottom.Put(ctx, d, int64(len(want)), bytes.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	s := tiers.NewStack(tiers.StackConfig{Name: "v", Tiers: []tiers.Entry{{Tier: top}, {Tier: mid}, {Tier: bottom}}})
	got, _, err := readAll(ctx, s, d)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read: %d bytes, %v", len(got), err)
	}
	for _, tr := range []*seesPut{top, mid} {
		if len(tr.verified) != 1 || tr.verified[0] != d {
			t.Errorf("fill handed a tier %v, want one verified stream of %s", tr.verified, d)
		}
	}

	// Put from a plain reader: verified by the stack, trusted below it.
	top.verified, mid.verified = nil, nil
	other, _ := tiertest.RandomBytes(4, 1<<20+5)
	od := blob.FromBytes(other)
	s2 := tiers.NewStack(tiers.StackConfig{Name: "p", Tiers: []tiers.Entry{{Tier: top}, {Tier: mid}}})
	if err := s2.Put(ctx, od, int64(len(other)), bytes.NewReader(other)); err != nil {
		t.Fatal(err)
	}
	if len(top.verified) != 1 || top.verified[0] != od || len(mid.verified) != 1 || mid.verified[0] != od {
		t.Errorf("Put handed the tiers %v and %v, want a verified stream of %s each", top.verified, mid.verified, od)
	}

	// Wrong bytes under the right digest: the stack's verification stops
	// them, and no tier commits anything.
	bad := bytes.Clone(other)
	bad[len(bad)/2] ^= 1
	bd := blob.FromBytes(append([]byte("x"), other...))
	if err := s2.Put(ctx, bd, int64(len(bad)), bytes.NewReader(bad)); !errors.Is(err, blob.ErrMismatch) {
		t.Fatalf("Put of wrong bytes: %v, want a mismatch", err)
	}
	for _, tr := range []blob.Tier{top, mid} {
		if _, err := tr.Stat(ctx, bd); !errors.Is(err, blob.ErrNotFound) {
			t.Errorf("a tier holds the wrong bytes after a failed Put: %v", err)
		}
	}
}
