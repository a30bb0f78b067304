package fetcher_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/memory"
)

// mirrorEnv is a fetcher whose registry client has one mirror configured
// for the origin. Both are in-process registries with their own request
// counters; the origin's "private/" repositories require alice's basic
// auth, the mirror is anonymous (as mirrors are). What the mirror holds is
// up to each test: a faithful copy, a stale or poisoned tag, or content
// the origin repository never had.
type mirrorEnv struct {
	origin, mirror string
	oc, mc         *registrytest.Counter
	clock          *clock
	stack          *tiers.Stack
	f              *fetcher.Fetcher
}

const (
	mirrorTagTTL   = time.Minute
	mirrorProofTTL = time.Hour
)

func newMirrorEnv(t *testing.T) *mirrorEnv {
	t.Helper()
	m := &mirrorEnv{oc: &registrytest.Counter{}, mc: &registrytest.Counter{}, clock: &clock{now: time.Now()}}
	m.origin = registrytest.InProcess(t, m.oc.Wrap, basicAuthFor("/v2/private/"))
	m.mirror = registrytest.InProcess(t, m.mc.Wrap)
	client, err := registry.New(registry.Config{
		AllowCIDRs:  []string{"127.0.0.0/8"},
		MaxAttempts: 2,
		Sleep:       func(context.Context, time.Duration) error { return nil },
		Mirrors:     map[string][]registry.Mirror{m.origin: {{Endpoint: m.mirror}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	top := memory.New(memory.Config{Name: "memory"})
	bottom := memory.New(memory.Config{Name: "bottom"})
	t.Cleanup(func() { top.Close(); bottom.Close() })
	m.stack = tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top}, {Tier: bottom}}})
	cfg := fetcher.DefaultConfig()
	cfg.Store, cfg.Registry, cfg.Now = m.stack, client, m.clock.Now
	cfg.TagTTL, cfg.ProofTTL = mirrorTagTTL, mirrorProofTTL
	if m.f, err = fetcher.New(cfg); err != nil {
		t.Fatal(err)
	}
	return m
}

// pushOrigin pushes img to the origin (as alice) and returns its digest.
func (m *mirrorEnv) pushOrigin(t *testing.T, repoTag string, img v1.Image) blob.Digest {
	t.Helper()
	d := registrytest.Push(t, m.origin, repoTag, img, aliceAuth())
	m.reset()
	return blob.Digest(d.String())
}

// pushMirror pushes img to the mirror (anonymously) and returns its digest.
func (m *mirrorEnv) pushMirror(t *testing.T, repoTag string, img v1.Image) blob.Digest {
	t.Helper()
	d := registrytest.Push(t, m.mirror, repoTag, img, nil)
	m.reset()
	return blob.Digest(d.String())
}

func (m *mirrorEnv) reset() { m.oc.Reset(); m.mc.Reset() }

func (m *mirrorEnv) ref(s string) string { return m.origin + "/" + s }

// requests counts the registry API requests (manifests and blobs) c saw.
func requestsOf(c *registrytest.Counter) int {
	return c.Count("HEAD", "manifest") + c.Count("GET", "manifest") + c.Count("HEAD", "blob") + c.Count("GET", "blob")
}

// members returns the digests recorded as members of repo (a membership
// ref in any tier of the stack).
func (m *mirrorEnv) members(t *testing.T, repo string) map[blob.Digest]bool {
	t.Helper()
	out := map[blob.Digest]bool{}
	err := m.stack.WalkRefs(context.Background(), blob.NamespaceMember, func(k blob.RefKey, r blob.Ref) error {
		if name, d, ok := strings.Cut(k.Name, "@"); ok && name == repo {
			out[blob.Digest(d)] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// digestsOf returns the manifest, config and layer digests of img.
func digestsOf(t *testing.T, img v1.Image) []blob.Digest {
	t.Helper()
	md, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	cd, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	out := []blob.Digest{blob.Digest(md.String()), blob.Digest(cd.String())}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, blob.Digest(d.String()))
	}
	return out
}

// noMembership fails if any digest of img is recorded as a member of repo.
func (m *mirrorEnv) noMembership(t *testing.T, repo string, img v1.Image) {
	t.Helper()
	got := m.members(t, repo)
	for _, d := range digestsOf(t, img) {
		if got[d] {
			t.Errorf("membership (%s, %s) was recorded from the mirror's answer", repo, d)
		}
	}
}

// warm lets alice fetch private/secret:v1 from the origin, which makes her
// access proof for the repository (the precondition of every attack).
func (m *mirrorEnv) warm(t *testing.T) {
	t.Helper()
	if _, err := m.f.FetchImage(context.Background(), m.ref("private/secret:v1"), alice()); err != nil {
		t.Fatalf("alice's first fetch: %v", err)
	}
	m.reset()
}

// RedteamMirrorAnswersMissingTag: the origin has no tag "ghost" in the
// repository, a mirror does. With an access proof in hand, fetching the
// tag must fail with not-found, not return the mirror's image, and record
// no membership for the mirror's bytes. Before the fix the proven path
// resolved the tag through the mirror (Registry.Resolve tried mirrors
// first) and recorded the mirror's manifest, config and layers as members
// of the origin repository.
func TestRedteamMirrorAnswersMissingTag(t *testing.T) {
	ctx := context.Background()
	m := newMirrorEnv(t)
	_, img := threeLayers(t)
	m.pushOrigin(t, "private/secret:v1", img)
	_, ghost := threeLayers(t)
	m.pushMirror(t, "private/secret:ghost", ghost)
	m.warm(t)

	im, err := m.f.FetchImage(ctx, m.ref("private/secret:ghost"), alice())
	if !errors.Is(err, registry.ErrNotFound) {
		got := blob.Digest("")
		if im != nil {
			got = im.Digest()
		}
		t.Fatalf("fetch of a tag only the mirror has: image %s, err %v; want registry.ErrNotFound", got, err)
	}
	if n := requestsOf(m.mc); n != 0 {
		t.Errorf("the mirror was asked %d times for a tag", n)
	}
	if m.oc.Count("HEAD", "manifest") != 1 {
		t.Errorf("origin manifest HEADs %d, want 1 (the origin answers tags)", m.oc.Count("HEAD", "manifest"))
	}
	m.noMembership(t, m.ref("private/secret"), ghost)
	if _, err := m.stack.GetRef(ctx, blob.RefKey{Namespace: blob.NamespaceTag, Name: m.ref("private/secret:ghost")}); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("a tag ref for the mirror's answer was written (err %v)", err)
	}
}

// RedteamMirrorSubstitutesTag: origin and mirror both have the tag, with
// different images (a stale or poisoned mirror). Once the cached tag
// expires (the access proof still valid), the refreshed tag must be the
// origin's, and the mirror's image must gain no membership.
func TestRedteamMirrorSubstitutesTag(t *testing.T) {
	ctx := context.Background()
	m := newMirrorEnv(t)
	want, img := threeLayers(t)
	od := m.pushOrigin(t, "private/secret:v1", img)
	_, other := threeLayers(t)
	md := m.pushMirror(t, "private/secret:v1", other)
	if od == md {
		t.Fatal("test images collide")
	}
	m.warm(t)
	m.clock.Advance(2 * mirrorTagTTL) // the tag expired, the proof did not

	im, err := m.f.FetchImage(ctx, m.ref("private/secret:v1"), alice())
	if err != nil {
		t.Fatalf("fetch after the tag expired: %v", err)
	}
	if im.Digest() != od {
		t.Fatalf("tag resolved to %s (mirror's is %s), want the origin's %s", im.Digest(), md, od)
	}
	got, _, err := readLayers(ctx, im)
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("layer %d is not the origin's", i)
		}
	}
	if n := m.mc.Count("HEAD", "manifest"); n != 0 {
		t.Errorf("the mirror was asked %d times to resolve the tag", n)
	}
	m.noMembership(t, m.ref("private/secret"), other)
}

// RedteamMirrorVouchesForDigest: "repo@D" where only the mirror holds D
// (the origin repository never had it). A caller with an access proof for
// the repository must be refused, and no membership (repo, D), nor for
// D's config and layers, may be written. Before the fix the mirror's HEAD
// answered for D and its bytes were recorded as members of the repository.
func TestRedteamMirrorVouchesForDigest(t *testing.T) {
	ctx := context.Background()
	m := newMirrorEnv(t)
	_, img := threeLayers(t)
	m.pushOrigin(t, "private/secret:v1", img)
	_, foreign := threeLayers(t)
	fd := m.pushMirror(t, "private/secret:elsewhere", foreign)
	m.warm(t)

	im, err := m.f.FetchImage(ctx, m.ref("private/secret@"+string(fd)), alice())
	if !errors.Is(err, registry.ErrNotFound) {
		got := blob.Digest("")
		if im != nil {
			got = im.Digest()
		}
		t.Fatalf("fetch of a digest only the mirror holds: image %s, err %v; want registry.ErrNotFound", got, err)
	}
	if n := requestsOf(m.mc); n != 0 {
		t.Errorf("the mirror was asked %d times before the origin vouched for the digest", n)
	}
	m.noMembership(t, m.ref("private/secret"), foreign)
	// And a second attempt is refused the same way: nothing was cached.
	if _, err := m.f.FetchImage(ctx, m.ref("private/secret@"+string(fd)), alice()); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("second fetch: %v, want registry.ErrNotFound", err)
	}
	m.noMembership(t, m.ref("private/secret"), foreign)
}

// A mirror still does its job: the origin resolves the tag (one HEAD with
// the caller's credentials), and the bytes of every digest the origin
// named (the manifest, and the config and layers it lists) come from the
// mirror, verified, and become members of the repository. A digest
// reference the origin vouched for is served the same way.
func TestMirrorServesDigestsTheOriginVouchedFor(t *testing.T) {
	ctx := context.Background()
	m := newMirrorEnv(t)
	want, img := threeLayers(t)
	od := m.pushOrigin(t, "private/secret:v1", img)
	if md := m.pushMirror(t, "private/secret:v1", img); md != od {
		t.Fatalf("mirror copy has digest %s, origin %s", md, od)
	}

	im, err := m.f.FetchImage(ctx, m.ref("private/secret:v1"), alice())
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := readLayers(ctx, im)
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("layer %d differs", i)
		}
	}
	if im.Digest() != od {
		t.Fatalf("digest %s, want %s", im.Digest(), od)
	}
	if h, g, b := m.oc.Count("HEAD", "manifest"), m.oc.Count("GET", "manifest"), m.oc.Count("GET", "blob"); h != 1 || g != 0 || b != 0 {
		t.Errorf("origin: manifest HEAD %d GET %d, blob GET %d; want 1, 0, 0", h, g, b)
	}
	if h, g, b := m.mc.Count("HEAD", "manifest"), m.mc.Count("GET", "manifest"), m.mc.Count("GET", "blob"); h != 0 || g != 1 || b != 1+len(want) {
		t.Errorf("mirror: manifest HEAD %d GET %d, blob GET %d; want 0, 1, %d", h, g, b, 1+len(want))
	}
	members := m.members(t, m.ref("private/secret"))
	for _, d := range digestsOf(t, img) {
		if !members[d] {
			t.Errorf("no membership for %s, which the origin vouched for and the mirror served", d)
		}
	}

	// Cached now: the tag ref and the proof answer without any request.
	m.reset()
	im, err = m.f.FetchImage(ctx, m.ref("private/secret:v1"), alice())
	if err != nil || !im.FromCache || im.Digest() != od {
		t.Fatalf("second fetch: %v (from cache %v)", err, im != nil && im.FromCache)
	}
	if _, _, err := readLayers(ctx, im); err != nil {
		t.Fatal(err)
	}
	if n := requestsOf(m.oc) + requestsOf(m.mc); n != 0 {
		t.Errorf("cached fetch made %d registry requests", n)
	}

	// A digest reference the origin vouches for (one HEAD), bytes from the
	// mirror, in a repository that is not yet a member for it.
	_, img2 := threeLayers(t)
	d2 := m.pushOrigin(t, "private/secret:v2", img2)
	m.pushMirror(t, "private/secret:v2", img2)
	im, err = m.f.FetchImage(ctx, m.ref("private/secret@"+string(d2)), alice())
	if err != nil || im.Digest() != d2 {
		t.Fatalf("digest fetch: %v", err)
	}
	if _, _, err := readLayers(ctx, im); err != nil {
		t.Fatal(err)
	}
	if h, g, b := m.oc.Count("HEAD", "manifest"), m.oc.Count("GET", "manifest"), m.oc.Count("GET", "blob"); h != 1 || g != 0 || b != 0 {
		t.Errorf("origin for the digest: manifest HEAD %d GET %d, blob GET %d; want 1, 0, 0", h, g, b)
	}
	if g := m.mc.Count("GET", "manifest"); g != 1 {
		t.Errorf("mirror manifest GETs for the digest %d, want 1", g)
	}
	if !m.members(t, m.ref("private/secret"))[d2] {
		t.Errorf("no membership for %s after the origin vouched and the mirror served", d2)
	}
}
