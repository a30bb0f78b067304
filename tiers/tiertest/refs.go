package tiertest

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
)

// refFixture stores a small blob (tiers may require the blob a ref points at)
// and returns a ref to it.
func refFixture(t *testing.T, tier blob.Tier, seed int64, mediaType string, expires time.Time) blob.Ref {
	t.Helper()
	b, _ := RandomBytes(seed, 100+int(seed%100))
	d := PutBytes(t, context.Background(), tier, b)
	return blob.Ref{Digest: d, Size: int64(len(b)), MediaType: mediaType, Expires: expires}
}

// later returns a time well in the future at whole-second precision, so any
// tier that keeps at least second precision returns it exactly.
func later() time.Time { return time.Now().Add(time.Hour).Truncate(time.Second) }

// sameRef reports whether got equals want field by field, comparing Expires
// with time.Equal (zero must stay zero).
func sameRef(got, want blob.Ref) bool {
	return got.Digest == want.Digest && got.Size == want.Size && got.MediaType == want.MediaType &&
		got.Expires.IsZero() == want.Expires.IsZero() && got.Expires.Equal(want.Expires)
}

func expectRef(t *testing.T, tier blob.Tier, k blob.RefKey, want blob.Ref) {
	t.Helper()
	got, err := tier.GetRef(context.Background(), k)
	if err != nil {
		t.Errorf("GetRef(%s) = %v, want %+v", k, err, want)
		return
	}
	if !sameRef(got, want) {
		t.Errorf("GetRef(%s) = %+v, want %+v", k, got, want)
	}
}

func expectNoRef(t *testing.T, tier blob.Tier, k blob.RefKey, why string) {
	t.Helper()
	if got, err := tier.GetRef(context.Background(), k); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("%s: GetRef(%s) = %+v, %v; want ErrNotFound", why, k, got, err)
	}
}

func putRef(t *testing.T, tier blob.Tier, k blob.RefKey, r blob.Ref) {
	t.Helper()
	if err := tier.PutRef(context.Background(), k, r); err != nil {
		t.Fatalf("PutRef(%s, %+v) = %v", k, r, err)
	}
}

func (s *suite) testRefRoundTrip(t *testing.T) {
	tier := s.cfg.New(t)
	tests := []struct {
		desc    string
		k       blob.RefKey
		media   string
		expires time.Time
	}{
		{"all fields", blob.RefKey{Namespace: blob.NamespaceTag, Scope: "tenant-a", Name: "docker.io/library/alpine:3.20"},
			"application/vnd.oci.image.manifest.v1+json", later()},
		{"no expiry", blob.RefKey{Namespace: blob.NamespaceDerived, Scope: "", Name: "ext4/sha256:abc/v1"},
			"application/vnd.strata.ext4", time.Time{}},
		{"empty media type", blob.RefKey{Namespace: blob.NamespaceProof, Scope: "group 7", Name: "registry.example/repo"},
			"", later().Add(24 * time.Hour)},
		{"unicode and escapes", blob.RefKey{Namespace: "ns/with/slashes", Scope: "sc%2Fope", Name: "näme with spaces?&#"},
			"text/plain; charset=utf-8", later()},
	}
	for i, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			want := refFixture(t, tier, int64(100+i), tt.media, tt.expires)
			putRef(t, tier, tt.k, want)
			expectRef(t, tier, tt.k, want)
		})
	}
}

func (s *suite) testRefOverwrite(t *testing.T) {
	tier := s.cfg.New(t)
	k := blob.RefKey{Namespace: blob.NamespaceTag, Scope: "s", Name: "image:latest"}
	first := refFixture(t, tier, 201, "application/vnd.oci.image.index.v1+json", later())
	second := refFixture(t, tier, 202, "application/vnd.docker.distribution.manifest.v2+json", time.Time{})
	putRef(t, tier, k, first)
	expectRef(t, tier, k, first)
	putRef(t, tier, k, second)
	expectRef(t, tier, k, second)
	putRef(t, tier, k, first)
	expectRef(t, tier, k, first)
}

func (s *suite) testRefScoping(t *testing.T) {
	tier := s.cfg.New(t)
	keys := []blob.RefKey{
		{Namespace: blob.NamespaceTag, Scope: "tenant-a", Name: "app:1"},
		{Namespace: blob.NamespaceTag, Scope: "tenant-b", Name: "app:1"},
		{Namespace: blob.NamespaceTag, Scope: "", Name: "app:1"},
		{Namespace: blob.NamespaceProof, Scope: "tenant-a", Name: "app:1"},
		{Namespace: blob.NamespaceTag, Scope: "tenant-a/x", Name: "app:1"},
		{Namespace: blob.NamespaceTag, Scope: "tenant-a", Name: "x/app:1"},
		{Namespace: blob.NamespaceTag, Scope: "Tenant-A", Name: "app:1"},
		{Namespace: blob.NamespaceTag + "/tenant-a", Scope: "", Name: "app:1"},
	}
	refs := make([]blob.Ref, len(keys))
	for i, k := range keys {
		refs[i] = refFixture(t, tier, int64(300+i), fmt.Sprintf("media/%d", i), time.Time{})
		putRef(t, tier, k, refs[i])
	}
	for i, k := range keys {
		expectRef(t, tier, k, refs[i])
	}
	// A key only one scope wrote is invisible from every other scope.
	only := blob.RefKey{Namespace: blob.NamespaceProof, Scope: "tenant-a", Name: "private/repo"}
	putRef(t, tier, only, refs[0])
	for _, scope := range []string{"tenant-b", "", "tenant-a ", "TENANT-A", "tenant-a/", "tenant"} {
		k := only
		k.Scope = scope
		expectNoRef(t, tier, k, fmt.Sprintf("scope %q reading scope %q's ref", scope, only.Scope))
	}
	// Deleting in one scope leaves the others.
	if !s.cfg.CannotDelete {
		if err := tier.DeleteRef(context.Background(), keys[0]); err != nil {
			t.Fatalf("DeleteRef = %v", err)
		}
		expectNoRef(t, tier, keys[0], "after DeleteRef")
		for i, k := range keys[1:] {
			expectRef(t, tier, k, refs[i+1])
		}
	}
}

func (s *suite) testRefExpiredInPast(t *testing.T) {
	tier := s.cfg.New(t)
	k := blob.RefKey{Namespace: blob.NamespaceTag, Scope: "s", Name: "expired"}
	r := refFixture(t, tier, 401, "m", time.Now().Add(-time.Hour))
	if err := tier.PutRef(context.Background(), k, r); err != nil {
		t.Fatalf("PutRef of an already expired ref = %v", err)
	}
	expectNoRef(t, tier, k, "ref that expired an hour ago")
	// An expired ref replaces a live one.
	live := r
	live.Expires = later()
	putRef(t, tier, k, live)
	expectRef(t, tier, k, live)
	r.Expires = time.Now().Add(-time.Second)
	if err := tier.PutRef(context.Background(), k, r); err != nil {
		t.Fatalf("PutRef of an already expired ref = %v", err)
	}
	expectNoRef(t, tier, k, "live ref overwritten by an expired one")
	if !s.cfg.CannotList {
		err := tier.WalkRefs(context.Background(), "", func(k blob.RefKey, r blob.Ref) error {
			t.Errorf("WalkRefs lists expired ref %s = %+v", k, r)
			return nil
		})
		if err != nil {
			t.Errorf("WalkRefs = %v", err)
		}
	}
}

func (s *suite) testRefExpiresSoon(t *testing.T) {
	tier := s.cfg.New(t)
	k := blob.RefKey{Namespace: blob.NamespaceProof, Scope: "s", Name: "short-lived"}
	const ttl = 300 * time.Millisecond
	r := refFixture(t, tier, 501, "m", time.Time{})
	r.Expires = time.Now().Add(ttl)
	putRef(t, tier, k, r)
	got, err := tier.GetRef(context.Background(), k)
	switch {
	case err == nil:
		// Tiers may keep expiry at millisecond precision.
		if got.Digest != r.Digest || got.Expires.Sub(r.Expires).Abs() >= time.Millisecond {
			t.Errorf("GetRef = %+v, want %+v", got, r)
		}
	case !errors.Is(err, blob.ErrNotFound):
		t.Fatalf("GetRef = %v", err)
	case time.Now().Before(r.Expires.Add(-time.Millisecond)):
		t.Fatalf("GetRef before expiry = %v", err)
	}
	// Poll until it is gone. A ref must miss as soon as its expiry has
	// passed; the grace only absorbs a slow machine between the checks.
	deadline := r.Expires.Add(2 * time.Second)
	for {
		_, err := tier.GetRef(context.Background(), k)
		if errors.Is(err, blob.ErrNotFound) {
			if time.Now().Before(r.Expires.Add(-time.Millisecond)) {
				t.Fatalf("ref vanished before it expired")
			}
			return
		}
		if err != nil {
			t.Fatalf("GetRef = %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("ref still served %v after it expired", time.Since(r.Expires).Round(time.Millisecond))
		}
		time.Sleep(ttl / 10)
	}
}

func (s *suite) testRefInvalid(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	good := refFixture(t, tier, 601, "m", time.Time{})
	goodKey := blob.RefKey{Namespace: blob.NamespaceTag, Scope: "s", Name: "n"}
	keys := []struct {
		desc string
		k    blob.RefKey
	}{
		{"empty namespace", blob.RefKey{Scope: "s", Name: "n"}},
		{"empty name", blob.RefKey{Namespace: blob.NamespaceTag, Scope: "s"}},
		{"all empty", blob.RefKey{}},
		{"NUL in namespace", blob.RefKey{Namespace: "ta\x00g", Scope: "s", Name: "n"}},
		{"NUL in scope", blob.RefKey{Namespace: blob.NamespaceTag, Scope: "s\x00", Name: "n"}},
		{"NUL in name", blob.RefKey{Namespace: blob.NamespaceTag, Scope: "s", Name: "\x00"}},
		{"too long", blob.RefKey{Namespace: blob.NamespaceTag, Scope: "s", Name: strings.Repeat("n", blob.MaxRefKeyLen)}},
	}
	for _, tt := range keys {
		t.Run("key "+tt.desc, func(t *testing.T) {
			if _, err := tier.GetRef(ctx, tt.k); !errors.Is(err, blob.ErrInvalidRef) {
				t.Errorf("GetRef = %v, want ErrInvalidRef", err)
			}
			if err := tier.PutRef(ctx, tt.k, good); !errors.Is(err, blob.ErrInvalidRef) {
				t.Errorf("PutRef = %v, want ErrInvalidRef", err)
			}
			err := tier.DeleteRef(ctx, tt.k)
			if !errors.Is(err, blob.ErrInvalidRef) && !(s.cfg.CannotDelete && errors.Is(err, blob.ErrUnsupported)) {
				t.Errorf("DeleteRef = %v, want ErrInvalidRef", err)
			}
		})
	}
	refs := []struct {
		desc string
		r    blob.Ref
		want error
	}{
		{"empty digest", blob.Ref{Size: 1}, blob.ErrInvalidDigest},
		{"sha512 digest", blob.Ref{Digest: blob.Digest("sha512:" + strings.Repeat("a", 128)), Size: 1}, blob.ErrInvalidDigest},
		{"malformed digest", blob.Ref{Digest: "sha256:../../x", Size: 1}, blob.ErrInvalidDigest},
		{"negative size", blob.Ref{Digest: good.Digest, Size: -1}, blob.ErrInvalidRef},
	}
	for _, tt := range refs {
		t.Run("ref "+tt.desc, func(t *testing.T) {
			if err := tier.PutRef(ctx, goodKey, tt.r); !errors.Is(err, tt.want) {
				t.Errorf("PutRef(%+v) = %v, want %v", tt.r, err, tt.want)
			}
			expectNoRef(t, tier, goodKey, "after a rejected PutRef")
		})
	}
	// The longest valid key works.
	long := blob.RefKey{Namespace: "n", Scope: "s", Name: strings.Repeat("x", blob.MaxRefKeyLen-len("n/s/"))}
	if err := long.Validate(); err != nil {
		t.Fatalf("test bug: %v", err)
	}
	putRef(t, tier, long, good)
	expectRef(t, tier, long, good)
}

func (s *suite) testDeleteRef(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	k := blob.RefKey{Namespace: blob.NamespaceTag, Scope: "s", Name: "to-delete"}
	other := blob.RefKey{Namespace: blob.NamespaceTag, Scope: "s", Name: "to-keep"}
	r := refFixture(t, tier, 701, "m", later())
	putRef(t, tier, k, r)
	putRef(t, tier, other, r)
	err := tier.DeleteRef(ctx, k)
	if s.cfg.CannotDelete {
		if !errors.Is(err, blob.ErrUnsupported) {
			t.Fatalf("DeleteRef on a tier that cannot delete = %v, want ErrUnsupported", err)
		}
		expectRef(t, tier, k, r)
		return
	}
	if err != nil {
		t.Fatalf("DeleteRef = %v", err)
	}
	expectNoRef(t, tier, k, "after DeleteRef")
	if err := tier.DeleteRef(ctx, k); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("second DeleteRef = %v, want ErrNotFound", err)
	}
	expectRef(t, tier, other, r)
	// The blob the ref pointed at is untouched.
	if _, err := tier.Stat(ctx, r.Digest); err != nil {
		t.Errorf("Stat of the blob a deleted ref pointed at = %v", err)
	}
	putRef(t, tier, k, r)
	expectRef(t, tier, k, r)
}

func (s *suite) testWalkRefs(t *testing.T) {
	tier := s.cfg.New(t)
	ctx := context.Background()
	if s.cfg.CannotList {
		err := tier.WalkRefs(ctx, "", func(blob.RefKey, blob.Ref) error { return nil })
		if !errors.Is(err, blob.ErrUnsupported) {
			t.Errorf("WalkRefs on a tier that cannot list = %v, want ErrUnsupported", err)
		}
		return
	}
	want := map[string]map[blob.RefKey]blob.Ref{}
	put := func(ns, scope, name string, seed int64, expires time.Time) {
		k := blob.RefKey{Namespace: ns, Scope: scope, Name: name}
		r := refFixture(t, tier, seed, "m-"+name, expires)
		putRef(t, tier, k, r)
		if r.Expired(time.Now()) {
			return
		}
		if want[ns] == nil {
			want[ns] = map[blob.RefKey]blob.Ref{}
		}
		want[ns][k] = r
	}
	put(blob.NamespaceTag, "a", "one", 801, later())
	put(blob.NamespaceTag, "b", "one", 802, time.Time{})
	put(blob.NamespaceTag, "", "two", 803, later())
	put(blob.NamespaceTag, "a", "expired", 804, time.Now().Add(-time.Minute))
	put(blob.NamespaceDerived, "a", "one", 805, time.Time{})
	put(blob.NamespaceProof, "a", "expired", 806, time.Now().Add(-time.Minute))
	put(blob.NamespaceTag+"x", "a", "prefix-namespace", 807, time.Time{})

	walk := func(ns string) map[blob.RefKey]blob.Ref {
		got := map[blob.RefKey]blob.Ref{}
		err := tier.WalkRefs(ctx, ns, func(k blob.RefKey, r blob.Ref) error {
			if _, dup := got[k]; dup {
				t.Errorf("WalkRefs(%q) lists %s twice", ns, k)
			}
			got[k] = r
			return nil
		})
		if err != nil {
			t.Fatalf("WalkRefs(%q) = %v", ns, err)
		}
		return got
	}
	compare := func(ns string, got, want map[blob.RefKey]blob.Ref) {
		t.Helper()
		if len(got) != len(want) {
			t.Errorf("WalkRefs(%q) listed %d refs %v, want %d %v", ns, len(got), sortedKeys(got), len(want), sortedKeys(want))
		}
		for k, w := range want {
			if g, ok := got[k]; !ok {
				t.Errorf("WalkRefs(%q) misses %s", ns, k)
			} else if !sameRef(g, w) {
				t.Errorf("WalkRefs(%q) lists %s = %+v, want %+v", ns, k, g, w)
			}
		}
	}
	all := map[blob.RefKey]blob.Ref{}
	for ns, m := range want {
		compare(ns, walk(ns), m)
		for k, r := range m {
			all[k] = r
		}
	}
	compare("", walk(""), all)
	compare(blob.NamespaceProof, walk(blob.NamespaceProof), nil)
	compare("no-such-namespace", walk("no-such-namespace"), nil)

	calls := 0
	err := tier.WalkRefs(ctx, "", func(blob.RefKey, blob.Ref) error { calls++; return errStop })
	if !errors.Is(err, errStop) {
		t.Errorf("WalkRefs whose fn fails = %v, want fn's error", err)
	}
	if calls != 1 {
		t.Errorf("WalkRefs called fn %d times after it returned an error, want 1", calls)
	}
}

func sortedKeys(m map[blob.RefKey]blob.Ref) []string {
	var out []string
	for k := range m {
		out = append(out, k.String())
	}
	sort.Strings(out)
	return out
}
