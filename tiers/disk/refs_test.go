package disk

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
)

func TestRefsExpiryAndNamespaces(t *testing.T) {
	ctx := context.Background()
	clock := &testClock{}
	tr := openTier(t, Config{Now: clock.Now})
	d := put(t, tr, []byte("target"))
	at := func(sec int64) time.Time { return time.Unix(1_700_000_000+sec, 0) }
	refs := []struct {
		k blob.RefKey
		r blob.Ref
	}{
		{blob.RefKey{Namespace: "tag", Scope: "a", Name: "x"}, blob.Ref{Digest: d, Size: 6, MediaType: "m1"}},
		{blob.RefKey{Namespace: "tags", Scope: "a", Name: "x"}, blob.Ref{Digest: d, Size: 6}},
		{blob.RefKey{Namespace: "tag", Scope: "b", Name: "soon"}, blob.Ref{Digest: d, Size: 6, Expires: at(1000)}},
		{blob.RefKey{Namespace: "tag/x", Name: "slash"}, blob.Ref{Digest: d, Size: 6, Expires: at(1 << 40)}},
	}
	for _, e := range refs {
		if err := tr.PutRef(ctx, e.k, e.r); err != nil {
			t.Fatal(err)
		}
	}
	list := func(ns string) map[blob.RefKey]blob.Ref {
		got := map[blob.RefKey]blob.Ref{}
		if err := tr.WalkRefs(ctx, ns, func(k blob.RefKey, r blob.Ref) error { got[k] = r; return nil }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	for _, tt := range []struct {
		ns   string
		want int
	}{{"", 4}, {"tag", 2}, {"tags", 1}, {"tag/x", 1}, {"none", 0}} {
		if got := list(tt.ns); len(got) != tt.want {
			t.Errorf("WalkRefs(%q) listed %d refs, want %d: %v", tt.ns, len(got), tt.want, got)
		}
	}
	got, err := tr.GetRef(ctx, refs[2].k)
	if err != nil || got.Digest != d || !got.Expires.Equal(at(1000)) {
		t.Fatalf("GetRef = %+v, %v", got, err)
	}
	if u := usage(t, tr); u.Refs != 4 || u.Blobs != 1 {
		t.Fatalf("usage %+v: refs and blobs must be counted apart", u)
	}
	clock.n.Add(2000) // "soon" has expired
	if _, err := tr.GetRef(ctx, refs[2].k); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("GetRef of an expired ref = %v", err)
	}
	if u := usage(t, tr); u.Refs != 3 {
		t.Fatalf("usage %+v after expiry", u)
	}
	// PurgeExpiredRefs finds the ones nobody read.
	if err := tr.PutRef(ctx, blob.RefKey{Namespace: "proof", Name: "p"}, blob.Ref{Digest: d, Size: 6, Expires: at(1)}); err != nil {
		t.Fatal(err)
	}
	if n, err := tr.PurgeExpiredRefs(ctx); err != nil || n != 1 {
		t.Fatalf("PurgeExpiredRefs = %d, %v; want 1", n, err)
	}
	if err := tr.DeleteRef(ctx, refs[0].k); err != nil {
		t.Fatal(err)
	}
	if err := tr.DeleteRef(ctx, refs[0].k); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("second DeleteRef = %v", err)
	}
	// Refs are not blobs: deleting refs leaves the blob, Walk lists no ref.
	n := 0
	if err := tr.Walk(ctx, func(blob.Info) error { n++; return nil }); err != nil || n != 1 {
		t.Fatalf("Walk listed %d, %v", n, err)
	}
}

func FuzzDecodeRef(f *testing.F) {
	d := blob.FromBytes([]byte("x"))
	f.Add(encodeRef(blob.Ref{Digest: d, Size: 1, MediaType: "application/vnd.oci.image.manifest.v1+json"}))
	f.Add(encodeRef(blob.Ref{Digest: d, Size: 1 << 40, Expires: time.Unix(0, 1)}))
	f.Add(encodeRef(blob.Ref{Digest: d, Expires: time.Date(9999, 1, 1, 0, 0, 0, 5, time.UTC)}))
	f.Add([]byte{refVersion})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRef(b)
		if err != nil {
			return
		}
		if r.Size < 0 {
			t.Fatalf("decoded a negative size from %x", b)
		}
		back, err := decodeRef(encodeRef(r))
		if err != nil || back.Digest != r.Digest || back.Size != r.Size || back.MediaType != r.MediaType || !back.Expires.Equal(r.Expires) {
			t.Fatalf("round trip of %+v gave %+v, %v", r, back, err)
		}
	})
}

func FuzzDecodeRow(f *testing.F) {
	f.Add(encodeRow(row{size: 1, atime: 2}))
	f.Add([]byte{rowVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRow(b)
		if err != nil {
			return
		}
		if r.size < 0 {
			t.Fatalf("negative size from %x", b)
		}
		if back, err := decodeRow(encodeRow(r)); err != nil || back != r {
			t.Fatalf("round trip of %+v gave %+v, %v", r, back, err)
		}
	})
}
