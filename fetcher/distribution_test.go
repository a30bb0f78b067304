package fetcher_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/registry/credential"
)

// The fetcher against the real distribution registry with htpasswd auth,
// behind a counting proxy: dedup counts, refusal of other callers, proof
// expiry, and serving from the cache while the registry is down.
func TestDistribution(t *testing.T) {
	ctx := context.Background()
	dist := registrytest.StartDistribution(t, registrytest.DistributionOptions{BasicUsers: map[string]string{user: password}})
	proxy := registrytest.NewProxy(t, dist.Host)
	e := newEnv(t, envOpts{host: proxy.Host(), counter: &proxy.Counter, pushAuth: aliceAuth(), tagTTL: time.Minute, proofTTL: 10 * time.Minute})
	want, img := threeLayers(t)
	e.push(t, "team/app:v1", img)
	ref := e.ref("team/app:v1")

	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			im, err := e.f.FetchImage(ctx, ref, alice())
			if err == nil {
				var got [][]byte
				got, _, err = readLayers(ctx, im)
				if err == nil && !bytes.Equal(got[1], want[1]) {
					err = errors.New("wrong layer bytes")
				}
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("caller %d: %v", i, err)
		}
	}
	if m, b := e.counter.Count("GET", "manifest"), e.counter.Count("GET", "blob"); m != 1 || b != 4 {
		t.Errorf("registry saw %d manifest GETs and %d blob GETs; want 1 and 4", m, b)
	}

	for _, cred := range []credential.Credential{credential.Anonymous, credential.Basic("", user, "wrong")} {
		_, err := e.f.FetchImage(ctx, ref, cred)
		if !errors.Is(err, registry.ErrDenied) {
			t.Fatalf("%v on a warm private image = %v, want ErrDenied", cred, err)
		}
		if strings.Contains(err.Error(), password) {
			t.Fatal("error leaks the password")
		}
	}

	// Registry down: alice's proof and the cached tag still serve.
	proxy.Inject(registrytest.Fault{Status: 503, Times: 1 << 20})
	im, err := e.f.FetchImage(ctx, ref, alice())
	if err != nil {
		t.Fatalf("cached image with the registry down: %v", err)
	}
	if _, src, err := readLayers(ctx, im); err != nil || src[0] == fetcher.SourceRegistry {
		t.Fatalf("layers with the registry down: %v from %v", err, src)
	}
	if _, err := e.f.FetchImage(ctx, e.ref("team/other:v1"), alice()); !errors.Is(err, registry.ErrUnreachable) {
		t.Fatalf("uncached image with the registry down = %v, want ErrUnreachable", err)
	}
	proxy.Clear()

	// The proof expires: the next fetch checks again at the registry.
	e.clock.Advance(11 * time.Minute)
	e.counter.Reset()
	if _, err := e.f.FetchImage(ctx, ref, alice()); err != nil {
		t.Fatal(err)
	}
	if e.counter.Count("HEAD", "manifest") != 1 {
		t.Errorf("fetch after proof expiry made %d manifest HEADs, want 1", e.counter.Count("HEAD", "manifest"))
	}
}
