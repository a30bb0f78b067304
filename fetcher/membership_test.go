package fetcher_test

import (
	"context"
	"io"
	"sync"
	"testing"

	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/internal/registrytest"
)

// Membership is recorded only at the verified end of a read from the
// caller's registry: a reader closed half-way proves nothing (the next
// Open reads the registry again), a complete one does (the next Open reads
// the tiers, and Authorize asks nothing).
func TestMembershipOnlyAtTheVerifiedEnd(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{})
	layer := registrytest.RandomBytes(t, 1<<20)
	e.push(t, "private/app:v1", registrytest.Image(t, layer))
	img, err := e.f.FetchImage(ctx, e.ref("private/app:v1"), alice())
	if err != nil {
		t.Fatal(err)
	}
	l := img.Layers()[0].(*fetcher.Layer)

	rc, info, err := l.OpenInfo(ctx)
	if err != nil || info.Tier != fetcher.SourceRegistry {
		t.Fatalf("first Open: tier %q, %v; want the registry", info.Tier, err)
	}
	if _, err := io.CopyN(io.Discard, rc, 1000); err != nil {
		t.Fatal(err)
	}
	rc.Close()

	_, tiersServed, err := readLayers(ctx, img)
	if err != nil || tiersServed[0] != fetcher.SourceRegistry {
		t.Fatalf("Open after a half read: tier %v, %v; want the registry (no membership yet)", tiersServed, err)
	}
	before := e.requests()
	if err := l.Authorize(ctx); err != nil {
		t.Fatalf("Authorize after a complete read: %v", err)
	}
	_, tiersServed, err = readLayers(ctx, img)
	if err != nil || tiersServed[0] == fetcher.SourceRegistry {
		t.Fatalf("Open after a complete read: tier %v, %v; want a tier", tiersServed, err)
	}
	if n := e.requests() - before; n != 0 {
		t.Errorf("Authorize and Open of a member made %d registry requests, want 0", n)
	}
}

// Concurrent callers that must prove membership for one layer of one
// repository (each with its own fetched image) share one registry read,
// all get the right bytes, and the next caller is a member.
func TestConcurrentProofsReadTheRegistryOnce(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{})
	layer := registrytest.RandomBytes(t, 2<<20)
	e.push(t, "private/app:v1", registrytest.Image(t, layer))
	const n = 8
	imgs := make([]*fetcher.Image, n)
	for i := range imgs {
		img, err := e.f.FetchImage(ctx, e.ref("private/app:v1"), alice())
		if err != nil {
			t.Fatal(err)
		}
		imgs[i] = img
	}
	e.counter.Reset()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, img := range imgs {
		wg.Go(func() {
			if i%2 == 0 {
				errs[i] = img.Layers()[0].(*fetcher.Layer).Authorize(ctx)
				return
			}
			got, _, err := readLayers(ctx, img)
			if err == nil && string(got[0]) != string(layer) {
				err = io.ErrUnexpectedEOF
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("caller %d: %v", i, err)
		}
	}
	if got := e.counter.Count("GET", "blob"); got != 1 {
		// A caller that looked just before a fill ended and leads the
		// next one re-checks the membership inside it.
		t.Errorf("registry blob GETs = %d for %d concurrent callers, want 1", got, n)
	}
}
