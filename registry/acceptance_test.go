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
		if n := opx.Count("HEAD", "manifest") + opx.Count("GET", "manifest") + opx.Count("GET", "blob"); n != 0 {
			t.Fatalf("origin saw %d manifest/blob requests on a mirror hit", n)
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
		if n := r.metric(t, "strata_registry_mirror_fallbacks_total", map[string]string{"reason": "not_found"}); n != 3 {
			t.Fatalf("fallbacks %v, want 3 (resolve, manifest, blob)", n)
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
		if n := r.metric(t, "strata_registry_mirror_fallbacks_total", map[string]string{"reason": "timeout"}); n != 3 {
			t.Fatalf("timeouts %v, want 3\n%s", n, r.dump(t))
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
