package registry_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry"
)

// TestAcceptanceResume64MiB: a 64 MiB blob served by the real registry is cut
// off part way; the client resumes with one ranged request for exactly the
// remainder (counted at the proxy) and the stream arrives verified.
func TestAcceptanceResume64MiB(t *testing.T) {
	const size = 64 << 20
	const cut = 23 << 20
	d := registrytest.StartDistribution(t, registrytest.DistributionOptions{})
	data := registrytest.RandomBytes(t, size)
	dg := blob.Digest(registrytest.PushBlob(t, d.Host, "big/blob", data, nil).String())
	px := registrytest.NewProxy(t, d.Host)
	px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Times: 1, TruncateAfter: cut})
	r := newClient(t, nil)
	repo, err := registry.ParseRepository(px.Host() + "/big/blob")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := r.c.Blob(context.Background(), repo, dg, size, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("bytes differ")
	}
	want := fmt.Sprintf("bytes=%d-%d", cut, size-1)
	if rg := px.Ranged(); len(rg) != 1 || rg[0] != want {
		t.Fatalf("ranged requests %q, want exactly [%q]", rg, want)
	}
	if n := px.Count("GET", "blob"); n != 2 {
		t.Fatalf("blob GETs %d, want 2", n)
	}
	if n := r.metric(t, "strata_registry_blob_resumes_total", nil); n != 1 {
		t.Fatalf("resumes %v, want 1", n)
	}
}

func TestDistributionMirror(t *testing.T) {
	origin := registrytest.StartDistribution(t, registrytest.DistributionOptions{BasicUsers: map[string]string{"alice": secret}})
	mirror := registrytest.StartDistribution(t, registrytest.DistributionOptions{})
	good := basicAuth("alice", secret)
	layer := registrytest.RandomBytes(t, 30000)
	img := registrytest.Image(t, layer)
	registrytest.Push(t, origin.Host, "lib/cached:v1", img, good)
	registrytest.Push(t, mirror.Host, "lib/cached:v1", img, nil)
	miss := pushAuthed(t, origin.Host, "lib/uncached:v1", 30000, good)
	opx := registrytest.NewProxy(t, origin.Host)
	mpx := registrytest.NewProxy(t, mirror.Host)
	mk := func(timeout time.Duration) *rig {
		return newClient(t, func(c *registry.Config) {
			c.Mirrors = map[string][]registry.Mirror{opx.Host(): {{Endpoint: mpx.Host(), Timeout: timeout}}}
		})
	}
	d, _ := img.Digest()
	hit := pushed{ref: mustRef(t, opx.Host()+"/lib/cached:v1"), manifest: blob.Digest(d.String()), layer: layer, layerD: blob.FromBytes(layer)}
	miss.ref = mustRef(t, opx.Host()+"/lib/uncached:v1")

	t.Run("hit", func(t *testing.T) {
		opx.Reset()
		mpx.Reset()
		r := mk(0)
		if err := pullAll(t, r.c, hit, good); err != nil {
			t.Fatal(err)
		}
		// The origin resolves the tag (one HEAD); the mirror serves the bytes.
		if h, n := opx.Count("HEAD", "manifest"), opx.Count("GET", "manifest")+opx.Count("GET", "blob"); h != 1 || n != 0 {
			t.Fatalf("origin saw %d manifest HEADs and %d manifest/blob GETs on a mirror hit, want 1 and 0", h, n)
		}
	})
	t.Run("miss goes to origin", func(t *testing.T) {
		opx.Reset()
		mpx.Reset()
		r := mk(0)
		if err := pullAll(t, r.c, miss, good); err != nil {
			t.Fatal(err)
		}
		if opx.Count("GET", "blob") != 1 || mpx.Count("GET", "blob") != 1 {
			t.Fatalf("origin blob GETs %d, mirror %d", opx.Count("GET", "blob"), mpx.Count("GET", "blob"))
		}
		if n := r.metric(t, "strata_registry_mirror_fallbacks_total", map[string]string{"reason": "not_found"}); n != 2 {
			t.Fatalf("fallbacks %v, want 2 (manifest, blob; tags resolve at the origin)", n)
		}
	})
	t.Run("slow mirror times out, origin serves", func(t *testing.T) {
		opx.Reset()
		mpx.Reset()
		mpx.Inject(registrytest.Fault{Delay: time.Minute})
		defer mpx.Clear()
		r := mk(250 * time.Millisecond)
		if err := pullAll(t, r.c, hit, good); err != nil {
			t.Fatal(err)
		}
		if opx.Count("GET", "blob") != 1 {
			t.Fatalf("origin blob GETs %d, want 1", opx.Count("GET", "blob"))
		}
		if n := r.metric(t, "strata_registry_mirror_fallbacks_total", map[string]string{"reason": "timeout"}); n != 2 {
			t.Fatalf("timeouts %v, want 2 (manifest, blob)\n%s", n, r.dump(t))
		}
	})
}

func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := ln.Addr().String()
	ln.Close() // nothing listens here now
	r := newClient(t, nil)
	ref := mustRef(t, host+"/app/x:v1")
	err = r.c.CheckAccess(context.Background(), ref, basicAuth("u", secret))
	if !errors.Is(err, registry.ErrUnreachable) || !errors.Is(err, blob.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnreachable", err)
	}
	if strings.Contains(err.Error(), secret) {
		t.Fatalf("error contains the password")
	}
	if errors.Is(err, registry.ErrDenied) || errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("unreachable confused with denied/not found: %v", err)
	}
}

func TestDistributionResumeUnknownLength(t *testing.T) {
	// Size unknown to the caller and no Content-Length (chunked): a cut
	// stream is seen as a broken chunked body and resumed with an open
	// range "bytes=N-", which the real registry answers with 206.
	const size = 1 << 20
	d := registrytest.StartDistribution(t, registrytest.DistributionOptions{})
	data := registrytest.RandomBytes(t, size)
	dg := blob.Digest(registrytest.PushBlob(t, d.Host, "big/blob", data, nil).String())
	px := registrytest.NewProxy(t, d.Host)
	px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Times: 1, Chunked: true, TruncateAfter: 300000})
	r := newClient(t, nil)
	repo, _ := registry.ParseRepository(px.Host() + "/big/blob")
	rc, err := r.c.Blob(context.Background(), repo, dg, -1, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read: %v (%d bytes)", err, len(got))
	}
	rg := px.Ranged()
	if len(rg) != 1 || !strings.HasPrefix(rg[0], "bytes=") || !strings.HasSuffix(rg[0], "-") {
		t.Fatalf("ranged requests %q, want one open range", rg)
	}
}

func TestBlobCapWithoutContentLength(t *testing.T) {
	host := registrytest.InProcess(t)
	p := pushImage(t, host, "app/one:v1", 100000)
	px := registrytest.NewProxy(t, host)
	px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Chunked: true})
	r := newClient(t, func(c *registry.Config) { c.MaxBlob = 50000 })
	_, err := readBlob(t, r.c, mustRef(t, px.Host()+"/app/one:v1"), p.layerD, -1)
	if !errors.Is(err, registry.ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge while streaming", err)
	}
}

func TestResolveByDigestChecksHeader(t *testing.T) {
	host := registrytest.InProcess(t)
	p := pushImage(t, host, "app/one:v1", 100)
	other := blob.FromBytes([]byte("something else"))
	px := registrytest.NewProxy(t, host)
	px.Inject(registrytest.Fault{Method: "HEAD", Kind: "manifest", SetHeaders: map[string]string{"Docker-Content-Digest": string(other)}})
	r := newClient(t, nil)
	_, err := r.c.Resolve(context.Background(), mustRef(t, px.Host()+"/app/one@"+string(p.manifest)), nil)
	if !errors.Is(err, blob.ErrMismatch) {
		t.Fatalf("err = %v, want ErrMismatch", err)
	}
	// With a mirror that lies, the origin answers: Resolve never asks a mirror.
	m := newClient(t, func(c *registry.Config) {
		c.Mirrors = map[string][]registry.Mirror{host: {{Endpoint: px.Host()}}}
	})
	before := px.Count("HEAD", "manifest")
	desc, err := m.c.Resolve(context.Background(), mustRef(t, host+"/app/one@"+string(p.manifest)), nil)
	if err != nil || desc.Digest != p.manifest {
		t.Fatalf("with a lying mirror: %v %v", desc, err)
	}
	if n := px.Count("HEAD", "manifest") - before; n != 0 {
		t.Fatalf("Resolve asked the mirror %d times", n)
	}
}

func TestDistributionMirrorWithOwnCredentials(t *testing.T) {
	origin := registrytest.StartDistribution(t, registrytest.DistributionOptions{})
	mirror := registrytest.StartDistribution(t, registrytest.DistributionOptions{BasicUsers: map[string]string{"mirror-user": secret}})
	mauth := basicAuth("mirror-user", secret)
	p := pushAuthed(t, mirror.Host, "lib/app:v1", 1000, mauth)
	registrytest.Push(t, origin.Host, "lib/app:v1", registrytest.Image(t, p.layer), nil)
	opx := registrytest.NewProxy(t, origin.Host)
	p.ref = mustRef(t, opx.Host()+"/lib/app:v1")
	for _, tc := range []struct {
		desc       string
		auth       *registry.Mirror
		originHits int
	}{
		{"mirror credentials configured: mirror serves", &registry.Mirror{Endpoint: mirror.Host, Auth: mauth}, 0},
		{"no mirror credentials: mirror denies, origin serves", &registry.Mirror{Endpoint: mirror.Host}, 1},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			opx.Reset()
			r := newClient(t, func(c *registry.Config) {
				c.Mirrors = map[string][]registry.Mirror{opx.Host(): {*tc.auth}}
			})
			if _, _, err := r.c.Manifest(context.Background(), mustRef(t, opx.Host()+"/lib/app@"+string(p.manifest)), nil); err != nil {
				t.Fatal(err)
			}
			if n := opx.Count("GET", "manifest"); n != tc.originHits {
				t.Fatalf("origin manifest GETs %d, want %d", n, tc.originHits)
			}
		})
	}
}
