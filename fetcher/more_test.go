package fetcher_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/registry/credential"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/memory"
)

// countingTier counts every call that reaches a tier.
type countingTier struct {
	blob.Tier
	calls atomic.Int64
}

func (c *countingTier) Stat(ctx context.Context, d blob.Digest) (blob.Info, error) {
	c.calls.Add(1)
	return c.Tier.Stat(ctx, d)
}
func (c *countingTier) GetRef(ctx context.Context, k blob.RefKey) (blob.Ref, error) {
	c.calls.Add(1)
	return c.Tier.GetRef(ctx, k)
}
func (c *countingTier) PutRef(ctx context.Context, k blob.RefKey, r blob.Ref) error {
	c.calls.Add(1)
	return c.Tier.PutRef(ctx, k, r)
}

// Anonymous callers never touch a shared tier; alice's fetch of the same
// image does use it.
func TestAnonymousSkipsSharedTier(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{})
	sharedMem := memory.New(memory.Config{Name: "shared"})
	t.Cleanup(func() { sharedMem.Close() })
	shared := &countingTier{Tier: sharedMem}
	stack := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: e.top}, {Tier: shared, Shared: true}}})
	cfg := fetcher.DefaultConfig()
	cfg.Store, cfg.Registry, cfg.Now = stack, e.client, e.clock.Now
	f, err := fetcher.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, img := threeLayers(t)
	e.push(t, "app/web:v1", img)
	e.push(t, "private/web:v1", img)
	im, err := f.FetchImage(ctx, e.ref("app/web:v1"), credential.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := readLayers(ctx, im); err != nil {
		t.Fatal(err)
	}
	if n := shared.calls.Load(); n != 0 {
		t.Fatalf("anonymous fetch made %d calls to the shared tier", n)
	}
	if u, _ := sharedMem.Usage(ctx); u.Blobs != 0 || u.Refs != 0 {
		t.Fatalf("shared tier holds %d blobs, %d refs after an anonymous fetch", u.Blobs, u.Refs)
	}
	im, err = f.FetchImage(ctx, e.ref("private/web:v1"), alice())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := readLayers(ctx, im); err != nil {
		t.Fatal(err)
	}
	if u, _ := sharedMem.Usage(ctx); u.Blobs == 0 {
		t.Fatal("an authenticated fetch stored nothing in the shared tier")
	}
}

// flakyManifests fails the first manifest GET with a 500 that the client
// does not retry (MaxAttempts 1 for this test's client), so the collapsed
// fetch's leader fails; its waiters must retry and succeed.
func TestFailedLeaderDoesNotFailWaiters(t *testing.T) {
	ctx := context.Background()
	var failed atomic.Bool
	gate := make(chan struct{})
	var closeGate sync.Once
	t.Cleanup(func() { closeGate.Do(func() { close(gate) }) })
	var entered atomic.Int64
	counter := &registrytest.Counter{}
	flaky := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == "GET" && registrytest.Kind(r.URL.Path) == "manifest" && !failed.Load() {
				entered.Add(1)
				<-gate
				failed.Store(true)
				w.WriteHeader(500)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	host := registrytest.InProcess(t, counter.Wrap, flaky)
	e := newEnv(t, envOpts{host: host})
	e.client = newClient(t, 1)
	cfg := fetcher.DefaultConfig()
	reg := prometheus.NewRegistry()
	cfg.Store, cfg.Registry, cfg.Now, cfg.Metrics = e.stack, e.client, e.clock.Now, reg
	f, err := fetcher.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, img := threeLayers(t)
	registrytest.Push(t, host, "app/web:v1", img, nil)

	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			_, errs[i] = f.FetchImage(ctx, host+"/app/web:v1", credential.Anonymous)
		})
	}
	waitUntil(t, func() bool {
		return entered.Load() == 1 && counterValue(t, reg, fetcher.MetricCollapsed) == n-1
	})
	closeGate.Do(func() { close(gate) })
	wg.Wait()
	failures := 0
	for _, err := range errs {
		if err != nil {
			failures++
			if !errors.Is(err, registry.ErrUnreachable) {
				t.Errorf("unexpected error: %v", err)
			}
		}
	}
	// The first flight fails for everyone in it; its waiters retry in a new
	// flight, which succeeds. Only callers that were not waiters (none here:
	// all joined the one flight) would see the failure, so at most the
	// leader's own call fails.
	if failures > 1 {
		t.Errorf("%d of %d callers failed; waiters of a failed leader must retry", failures, n)
	}
}

// A layer removed from every tier is read again from the registry by an
// Image fetched earlier.
func TestRefillAfterDelete(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{})
	want, img := threeLayers(t)
	e.push(t, "app/web:v1", img)
	im, err := e.f.FetchImage(ctx, e.ref("app/web:v1"), credential.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := readLayers(ctx, im); err != nil {
		t.Fatal(err)
	}
	// Drop every cached copy: the next read refills from the registry,
	// verified end to end.
	d := im.Layers()[1].Digest()
	if err := e.stack.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	got, _, err := readLayers(ctx, im)
	if err != nil || !bytes.Equal(got[1], want[1]) {
		t.Fatalf("refetched layer: %v", err)
	}
}

func newClient(t *testing.T, attempts int) *registry.Client {
	t.Helper()
	c, err := registry.New(registry.Config{AllowCIDRs: []string{"127.0.0.0/8"}, MaxAttempts: attempts})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// counterValue returns the value of the counter name (without labels) in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 2000; i++ {
		if cond() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("condition not reached")
}
