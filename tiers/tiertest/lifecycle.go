package tiertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
)

func (s *suite) testUsage(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	u0, err := tier.Usage(ctx)
	if errors.Is(err, blob.ErrUnsupported) {
		t.Skip("tier does not report usage (ErrUnsupported)")
	}
	if err != nil {
		t.Fatalf("Usage = %v", err)
	}
	if u0.Blobs != 0 || u0.Bytes != 0 || u0.Refs != 0 || u0.Budget < 0 {
		t.Errorf("Usage of an empty tier = %+v", u0)
	}
	var total int64
	for i, size := range []int64{10, 2000, 30_000} {
		b, _ := RandomBytes(int64(900+i), int(s.clamp(size)))
		PutBytes(t, ctx, tier, b)
		total += int64(len(b))
	}
	r := refFixture(t, tier, 910, "m", time.Time{})
	total += r.Size
	putRef(t, tier, blob.RefKey{Namespace: "n", Name: "a"}, r)
	putRef(t, tier, blob.RefKey{Namespace: "n", Name: "b"}, r)
	u, err := tier.Usage(ctx)
	if err != nil {
		t.Fatalf("Usage = %v", err)
	}
	if u.Blobs < 4 || u.Bytes < total || u.Refs < 2 {
		t.Errorf("Usage after 4 blobs of %d bytes and 2 refs = %+v", total, u)
	}
	if u.Budget < 0 || (u.Budget > 0 && u.Bytes > u.Budget) {
		t.Errorf("Usage = %+v: bytes over budget or negative budget", u)
	}
}

// noPanic runs fn and turns a panic into a test failure.
func noPanic(t *testing.T, op string, fn func() error) error {
	t.Helper()
	var err error
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Errorf("%s after Close panicked: %v", op, p)
				err = fmt.Errorf("panic: %v", p)
			}
		}()
		err = fn()
	}()
	return err
}

func (s *suite) testClose(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	d := PutBytes(t, ctx, tier, []byte("close"))
	k := blob.RefKey{Namespace: "n", Name: "close"}
	r := blob.Ref{Digest: d, Size: 5}
	putRef(t, tier, k, r)
	if err := tier.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	ops := []struct {
		desc string
		fn   func() error
	}{
		{"Stat", func() error { _, err := tier.Stat(ctx, d); return err }},
		{"Open", func() error {
			rc, _, err := tier.Open(ctx, d)
			if err == nil {
				_, err = io.ReadAll(rc)
				rc.Close()
			}
			return err
		}},
		{"Put", func() error {
			b := []byte("after close")
			return tier.Put(ctx, blob.FromBytes(b), int64(len(b)), bytes.NewReader(b))
		}},
		{"Delete", func() error { return tier.Delete(ctx, d) }},
		{"Walk", func() error { return tier.Walk(ctx, func(blob.Info) error { return nil }) }},
		{"GetRef", func() error { _, err := tier.GetRef(ctx, k); return err }},
		{"PutRef", func() error { return tier.PutRef(ctx, k, r) }},
		{"DeleteRef", func() error { return tier.DeleteRef(ctx, k) }},
		{"WalkRefs", func() error { return tier.WalkRefs(ctx, "", func(blob.RefKey, blob.Ref) error { return nil }) }},
		{"Usage", func() error { _, err := tier.Usage(ctx); return err }},
	}
	for _, op := range ops {
		if err := noPanic(t, op.desc, op.fn); err == nil {
			t.Errorf("%s after Close succeeded, want an error", op.desc)
		}
	}
	noPanic(t, "second Close", tier.Close)
}

func (s *suite) testReopen(t *testing.T) {
	if s.cfg.Reopen == nil {
		t.Skip("tier does not persist (Config.Reopen is nil)")
	}
	tier := s.cfg.New(t)
	ctx := context.Background()
	small, _ := RandomBytes(1001, 777)
	smallD := PutBytes(t, ctx, tier, small)
	bigSize := s.clamp(3 << 20)
	bigD := PutRandom(t, ctx, tier, 1002, bigSize)
	PutBytes(t, ctx, tier, nil)
	var goneD blob.Digest
	if !s.noBlobDelete() {
		goneD = PutBytes(t, ctx, tier, []byte("deleted before reopen"))
		if err := tier.Delete(ctx, goneD); err != nil {
			t.Fatalf("Delete = %v", err)
		}
	}
	live := blob.RefKey{Namespace: blob.NamespaceTag, Scope: "a", Name: "persisted"}
	forever := blob.RefKey{Namespace: blob.NamespaceDerived, Name: "no expiry"}
	expiring := blob.RefKey{Namespace: blob.NamespaceProof, Scope: "a", Name: "expires"}
	liveRef := blob.Ref{Digest: smallD, Size: int64(len(small)), MediaType: "application/x-test", Expires: later()}
	foreverRef := blob.Ref{Digest: bigD, Size: bigSize, MediaType: "m"}
	putRef(t, tier, live, liveRef)
	putRef(t, tier, forever, foreverRef)
	putRef(t, tier, expiring, blob.Ref{Digest: smallD, Size: int64(len(small)), Expires: time.Now().Add(-time.Second)})

	tier = s.cfg.Reopen(t, tier)
	expectContent(t, tier, smallD, small)
	expectContent(t, tier, blob.EmptyDigest, nil)
	if got, n := StreamDigest(t, ctx, tier, bigD); got != bigD || n != bigSize {
		t.Errorf("after reopen, %s reads as %d bytes %s", bigD, n, got)
	}
	if goneD != "" {
		expectMiss(t, tier, goneD, "blob deleted before reopen")
	}
	expectRef(t, tier, live, liveRef)
	expectRef(t, tier, forever, foreverRef)
	expectNoRef(t, tier, expiring, "expired ref after reopen")
	if !s.cfg.CannotList {
		n := 0
		if err := tier.Walk(ctx, func(info blob.Info) error {
			n++
			if info.Digest == goneD {
				t.Errorf("Walk after reopen lists the deleted blob")
			}
			return nil
		}); err != nil {
			t.Errorf("Walk after reopen = %v", err)
		}
		if n != 3 {
			t.Errorf("Walk after reopen lists %d blobs, want 3", n)
		}
	}
	// The reopened tier takes new blobs.
	d := PutBytes(t, ctx, tier, []byte(strings.Repeat("after reopen ", 100)))
	expectContent(t, tier, d, []byte(strings.Repeat("after reopen ", 100)))
}
