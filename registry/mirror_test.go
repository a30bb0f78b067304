package registry_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry"
)

// mirrorRig is an origin and a mirror (both in-process, each behind a
// counting proxy); the mirror holds "app/one" only.
type mirrorRig struct {
	origin, mirror *registrytest.Proxy
	one, two       pushed
}

func newMirrorRig(t *testing.T) *mirrorRig {
	t.Helper()
	originHost := registrytest.InProcess(t)
	mirrorHost := registrytest.InProcess(t)
	m := &mirrorRig{}
	m.one = pushImage(t, originHost, "app/one:v1", 5000)
	img := registrytest.Image(t, m.one.layer)
	registrytest.Push(t, mirrorHost, "app/one:v1", img, nil)
	m.two = pushImage(t, originHost, "app/two:v1", 5000)
	m.origin = registrytest.NewProxy(t, originHost)
	m.mirror = registrytest.NewProxy(t, mirrorHost)
	m.one.ref = mustRef(t, m.origin.Host()+"/app/one:v1")
	m.two.ref = mustRef(t, m.origin.Host()+"/app/two:v1")
	return m
}

func (m *mirrorRig) client(t *testing.T, timeout time.Duration) *rig {
	return newClient(t, func(c *registry.Config) {
		c.Mirrors = map[string][]registry.Mirror{m.origin.Host(): {{Endpoint: m.mirror.Host(), Timeout: timeout}}}
	})
}

func TestMirrorHitAndMiss(t *testing.T) {
	m := newMirrorRig(t)
	r := m.client(t, 0)
	ctx := context.Background()

	// Hit: the origin resolves the tag (one HEAD), the mirror serves the
	// bytes of the digest the origin named.
	desc, err := r.c.Resolve(ctx, m.one.ref, nil)
	if err != nil || desc.Digest != m.one.manifest {
		t.Fatalf("Resolve: %v %v", desc, err)
	}
	dref := mustRef(t, m.origin.Host()+"/app/one@"+string(desc.Digest))
	if _, _, err := r.c.Manifest(ctx, dref, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := readBlob(t, r.c, m.one.ref, m.one.layerD, int64(len(m.one.layer))); err != nil || !bytes.Equal(got, m.one.layer) {
		t.Fatalf("Blob: %v", err)
	}
	if m.origin.Count("HEAD", "manifest") != 1 || m.origin.Count("GET", "manifest")+m.origin.Count("GET", "blob") != 0 {
		t.Fatalf("origin manifest HEADs %d, manifest/blob GETs %d on a mirror hit, want 1 and 0",
			m.origin.Count("HEAD", "manifest"), m.origin.Count("GET", "manifest")+m.origin.Count("GET", "blob"))
	}
	if m.mirror.Count("HEAD", "manifest") != 0 || m.mirror.Count("GET", "manifest") != 1 || m.mirror.Count("GET", "blob") != 1 {
		t.Fatalf("mirror manifest HEADs %d GETs %d, blob GETs %d, want 0, 1, 1",
			m.mirror.Count("HEAD", "manifest"), m.mirror.Count("GET", "manifest"), m.mirror.Count("GET", "blob"))
	}

	// Miss: the mirror says 404, the origin serves.
	m.origin.Reset()
	desc, err = r.c.Resolve(ctx, m.two.ref, nil)
	if err != nil || desc.Digest != m.two.manifest {
		t.Fatalf("Resolve miss: %v %v", desc, err)
	}
	if got, err := readBlob(t, r.c, m.two.ref, m.two.layerD, int64(len(m.two.layer))); err != nil || !bytes.Equal(got, m.two.layer) {
		t.Fatalf("Blob miss: %v", err)
	}
	if m.origin.Count("HEAD", "manifest") != 1 || m.origin.Count("GET", "blob") != 1 {
		t.Fatalf("origin HEAD %d blob GET %d, want 1 and 1", m.origin.Count("HEAD", "manifest"), m.origin.Count("GET", "blob"))
	}
	if n := r.metric(t, "strata_registry_mirror_fallbacks_total", map[string]string{"mirror": m.mirror.Host(), "reason": "not_found"}); n != 1 {
		t.Fatalf("fallbacks{not_found} = %v, want 1 (the blob)\n%s", n, r.dump(t))
	}
}

// Tags, and whether the origin repository holds a digest, come from the
// origin only: a mirror that holds a tag the origin lacks, a different
// image under the same tag, or a digest the origin repository never had
// is never asked (Resolve, Manifest of a tag). Before, Resolve and
// Manifest tried the mirror first and returned its answer.
func TestMirrorNeverAnswersTags(t *testing.T) {
	ctx := context.Background()
	m := newMirrorRig(t)
	ghost := pushImage(t, m.mirror.Host(), "app/one:ghost", 3000) // a tag the origin lacks
	stale := pushImage(t, m.mirror.Host(), "app/two:v1", 3000)    // another image under the origin's tag
	r := m.client(t, 0)
	tests := []struct {
		desc    string
		ref     string
		want    blob.Digest // "" for registry.ErrNotFound
		mirrors blob.Digest // what the mirror would have answered
	}{
		{"tag only the mirror has", "/app/one:ghost", "", ghost.manifest},
		{"tag both have, different images", "/app/two:v1", m.two.manifest, stale.manifest},
		{"digest only the mirror holds", "/app/one@" + string(ghost.manifest), "", ghost.manifest},
	}
	ops := []struct {
		name     string
		tagsOnly bool // by digest, a mirror may serve the bytes (see TestMirrorHitAndMiss)
		do       func(registry.Reference) (blob.Digest, error)
	}{
		{"Resolve", false, func(ref registry.Reference) (blob.Digest, error) {
			d, err := r.c.Resolve(ctx, ref, nil)
			return d.Digest, err
		}},
		{"Head", false, func(ref registry.Reference) (blob.Digest, error) {
			d, err := r.c.Head(ctx, ref, nil)
			return d.Digest, err
		}},
		{"Manifest", true, func(ref registry.Reference) (blob.Digest, error) {
			b, d, err := r.c.Manifest(ctx, ref, nil)
			if err == nil && blob.FromBytes(b) != d.Digest {
				t.Fatalf("Manifest bytes do not hash to %s", d.Digest)
			}
			return d.Digest, err
		}},
	}
	for _, tt := range tests {
		for _, op := range ops {
			if op.tagsOnly && strings.Contains(tt.ref, "@") {
				continue
			}
			t.Run(tt.desc+"/"+op.name, func(t *testing.T) {
				m.origin.Reset()
				m.mirror.Reset()
				got, err := op.do(mustRef(t, m.origin.Host()+tt.ref))
				switch {
				case tt.want == "" && !errors.Is(err, registry.ErrNotFound):
					t.Fatalf("got %s, %v; want registry.ErrNotFound (the mirror would say %s)", got, err, tt.mirrors)
				case tt.want != "" && (err != nil || got != tt.want):
					t.Fatalf("got %s, %v; want the origin's %s (the mirror's is %s)", got, err, tt.want, tt.mirrors)
				}
				if n := m.mirror.Count("HEAD", "manifest") + m.mirror.Count("GET", "manifest"); n != 0 {
					t.Fatalf("the mirror was asked %d times", n)
				}
			})
		}
	}
}

func TestMirrorErrorsMoveOn(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		desc   string
		fault  registrytest.Fault
		reason string
	}{
		{"5xx", registrytest.Fault{Kind: "manifest", Status: http.StatusBadGateway}, "unreachable"},
		{"denied", registrytest.Fault{Kind: "manifest", Status: http.StatusForbidden}, "denied"},
		{"connection dropped", registrytest.Fault{Kind: "manifest", Abort: true}, "unreachable"},
		{"wrong bytes", registrytest.Fault{Method: "GET", Kind: "manifest", Corrupt: true}, "mismatch"},
		{"slow", registrytest.Fault{Kind: "manifest", Delay: time.Minute}, "timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			m := newMirrorRig(t)
			m.mirror.Inject(tt.fault)
			r := newClient(t, func(c *registry.Config) {
				c.MaxAttempts = 2
				c.Mirrors = map[string][]registry.Mirror{m.origin.Host(): {{Endpoint: m.mirror.Host(), Timeout: 300 * time.Millisecond}}}
			})
			ref := mustRef(t, m.origin.Host()+"/app/one@"+string(m.one.manifest))
			b, d, err := r.c.Manifest(ctx, ref, nil)
			if err != nil || d.Digest != m.one.manifest || blob.FromBytes(b) != m.one.manifest {
				t.Fatalf("Manifest: %v", err)
			}
			if m.origin.Count("GET", "manifest") != 1 {
				t.Fatalf("origin manifest GETs %d, want 1", m.origin.Count("GET", "manifest"))
			}
			if n := r.metric(t, "strata_registry_mirror_fallbacks_total", map[string]string{"reason": tt.reason}); n != 1 {
				t.Fatalf("fallbacks{%s} = %v, want 1\n%s", tt.reason, n, r.dump(t))
			}
		})
	}
}

func TestMirrorBadBlobNeverServed(t *testing.T) {
	m := newMirrorRig(t)
	m.mirror.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Corrupt: true})
	r := m.client(t, 0)
	_, err := readBlob(t, r.c, m.one.ref, m.one.layerD, int64(len(m.one.layer)))
	if !errors.Is(err, blob.ErrMismatch) {
		t.Fatalf("first read: err = %v, want ErrMismatch", err)
	}
	// The mirror is now known bad for this digest: the retry goes to the origin.
	got, err := readBlob(t, r.c, m.one.ref, m.one.layerD, int64(len(m.one.layer)))
	if err != nil || !bytes.Equal(got, m.one.layer) {
		t.Fatalf("second read: %v", err)
	}
	if m.mirror.Count("GET", "blob") != 1 || m.origin.Count("GET", "blob") != 1 {
		t.Fatalf("mirror GETs %d origin GETs %d, want 1 and 1", m.mirror.Count("GET", "blob"), m.origin.Count("GET", "blob"))
	}
}

func TestMirrorSlowBlobTimesOut(t *testing.T) {
	m := newMirrorRig(t)
	m.mirror.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Delay: time.Minute})
	r := m.client(t, 200*time.Millisecond)
	got, err := readBlob(t, r.c, m.one.ref, m.one.layerD, int64(len(m.one.layer)))
	if err != nil || !bytes.Equal(got, m.one.layer) {
		t.Fatalf("read: %v", err)
	}
	if m.origin.Count("GET", "blob") != 1 {
		t.Fatalf("origin GETs %d", m.origin.Count("GET", "blob"))
	}
	if n := r.metric(t, "strata_registry_mirror_fallbacks_total", map[string]string{"reason": "timeout"}); n != 1 {
		t.Fatalf("fallbacks{timeout} = %v\n%s", n, r.dump(t))
	}
}

func TestMirrorsNeverSeeCallerCredentials(t *testing.T) {
	m := newMirrorRig(t)
	var auths []string
	mirrorHost := registrytest.InProcess(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if a := r.Header.Get("Authorization"); a != "" {
				auths = append(auths, a)
			}
			h.ServeHTTP(w, r)
		})
	})
	r := newClient(t, func(c *registry.Config) {
		c.Mirrors = map[string][]registry.Mirror{m.origin.Host(): {{Endpoint: mirrorHost}}}
	})
	// The in-process registry does not challenge, so a transport that sends
	// basic credentials would send them unasked: ggcr's basic transport does.
	dref := mustRef(t, m.origin.Host()+"/app/one@"+string(m.one.manifest))
	if _, _, err := r.c.Manifest(context.Background(), dref, basicAuth("user", "s3cr3t-PASSWORD")); err != nil {
		t.Fatal(err)
	}
	if len(auths) != 0 {
		t.Fatalf("mirror received Authorization headers: %d", len(auths))
	}
	// And CheckAccess never asks a mirror.
	if err := r.c.CheckAccess(context.Background(), m.one.ref, nil); err != nil {
		t.Fatal(err)
	}
	if m.origin.Count("HEAD", "manifest") != 1 {
		t.Fatalf("CheckAccess origin HEADs %d, want 1", m.origin.Count("HEAD", "manifest"))
	}
}

func TestHeadAsksOriginOnly(t *testing.T) {
	m := newMirrorRig(t)
	r := m.client(t, 0)
	desc, err := r.c.Head(context.Background(), m.one.ref, nil)
	if err != nil || desc.Digest != m.one.manifest {
		t.Fatalf("Head: %v %v", desc, err)
	}
	if m.origin.Count("HEAD", "manifest") != 1 || m.mirror.Count("HEAD", "manifest") != 0 {
		t.Fatalf("origin HEADs %d mirror HEADs %d, want 1 and 0", m.origin.Count("HEAD", "manifest"), m.mirror.Count("HEAD", "manifest"))
	}
	m.origin.Inject(registrytest.Fault{Method: "HEAD", Kind: "manifest", Status: http.StatusForbidden})
	if _, err := r.c.Head(context.Background(), m.one.ref, nil); !errors.Is(err, registry.ErrDenied) {
		t.Fatalf("Head on 403: %v, want ErrDenied", err)
	}
}

func TestMirrorBrokenMidBlobResumesAtOrigin(t *testing.T) {
	m := newMirrorRig(t)
	m.mirror.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Times: 1, TruncateAfter: 1000})
	m.mirror.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Ranged: true, Status: http.StatusNotFound})
	r := m.client(t, 0)
	got, err := readBlob(t, r.c, m.one.ref, m.one.layerD, int64(len(m.one.layer)))
	if err != nil || !bytes.Equal(got, m.one.layer) {
		t.Fatalf("read: %v", err)
	}
	if rg := m.origin.Ranged(); len(rg) != 1 || rg[0] != "bytes=1000-4999" {
		t.Fatalf("origin ranged requests %q, want [bytes=1000-4999]", rg)
	}
	if m.mirror.Count("GET", "blob") != 2 {
		t.Fatalf("mirror blob GETs %d, want 2", m.mirror.Count("GET", "blob"))
	}
}
