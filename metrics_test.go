package strata

import (
	"context"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata/internal/admin"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/registry/credential"
)

// gauge returns the value of the sample of name whose labels include
// want, and whether there is one.
func gauge(t *testing.T, g prometheus.Gatherer, name string, want map[string]string) (float64, bool) {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	sample:
		for _, m := range f.GetMetric() {
			for k, v := range want {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == k && l.GetValue() == v)
				}
				if !found {
					continue sample
				}
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue(), true
			}
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

// TestTierUsageGauges checks that the usage gauges of the memory and disk
// tiers and of the ext4 images follow what a fetch and a conversion store.
func TestTierUsageGauges(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.InProcess(t)
	img, err := random.Image(1<<14, 2) // two tar layers
	if err != nil {
		t.Fatal(err)
	}
	registrytest.Push(t, reg, "app:v1", img, nil)
	prom := prometheus.NewRegistry()
	h, err := Open(ctx, withMetrics(testConfig(t), prom))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	for _, tier := range []string{admin.TierMemory, admin.TierDisk} {
		if v, ok := gauge(t, prom, "strata_tier_usage_blobs", map[string]string{"tier": tier}); !ok || v != 0 {
			t.Fatalf("strata_tier_usage_blobs{tier=%q} before any fetch = %v (present %v), want 0", tier, v, ok)
		}
	}
	if v, ok := gauge(t, prom, "strata_tier_budget_bytes", map[string]string{"tier": admin.TierDisk}); !ok || v != float64(defaultDiskBudget) {
		t.Fatalf("strata_tier_budget_bytes{tier=disk} = %v (present %v), want %d", v, ok, defaultDiskBudget)
	}
	res, err := h.Admin().Warm(ctx, reg+"/app:v1", credential.Anonymous, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	usage, err := h.Admin().Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range usage[:2] {
		blobs, _ := gauge(t, prom, "strata_tier_usage_blobs", map[string]string{"tier": u.Tier})
		bytes, _ := gauge(t, prom, "strata_tier_usage_bytes", map[string]string{"tier": u.Tier})
		if blobs != float64(u.Blobs) || bytes != float64(u.Bytes) {
			t.Errorf("tier %s: gauges say %v blobs, %v bytes; Usage says %d, %d", u.Tier, blobs, bytes, u.Blobs, u.Bytes)
		}
	}
	if blobs, _ := gauge(t, prom, "strata_tier_usage_blobs", map[string]string{"tier": admin.TierDisk}); blobs != float64(len(res.Blobs)) {
		t.Errorf("strata_tier_usage_blobs{tier=disk} = %v after the fetch, want %d", blobs, len(res.Blobs))
	}
	if bytes, _ := gauge(t, prom, "strata_tier_usage_bytes", map[string]string{"tier": admin.TierDisk}); bytes != float64(res.Bytes) {
		t.Errorf("strata_tier_usage_bytes{tier=disk} = %v after the fetch, want %d", bytes, res.Bytes)
	}
	if n, ok := gauge(t, prom, "strata_ext4_images", nil); !ok || n != 0 {
		t.Fatalf("strata_ext4_images before a conversion = %v (present %v), want 0", n, ok)
	}

	fimg, err := h.Fetcher().FetchImage(ctx, reg+"/app:v1", credential.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Ext4().Materialize(ctx, fimg, nil); err != nil {
		t.Fatal(err)
	}
	eu, err := h.Ext4().Usage()
	if err != nil {
		t.Fatal(err)
	}
	n, _ := gauge(t, prom, "strata_ext4_images", nil)
	b, _ := gauge(t, prom, "strata_ext4_images_bytes", nil)
	if n != 1 || b <= 0 || b != float64(eu.Bytes) {
		t.Errorf("ext4 gauges after a conversion: %v images, %v bytes; want 1 and %d", n, b, eu.Bytes)
	}

	// A closed host reports no usage rather than failing the scrape.
	h.Close()
	if _, err := prom.Gather(); err != nil {
		t.Fatalf("gather after Close: %v", err)
	}
}

// TestRegistryMetricHosts checks that the host opens its registry client
// with the registries it has credentials for as metric hosts: they are
// named, and a registry nobody configured is "other".
func TestRegistryMetricHosts(t *testing.T) {
	ctx := context.Background()
	known := registrytest.InProcess(t)
	unknown := registrytest.InProcess(t)
	img := registrytest.Image(t, registrytest.RandomBytes(t, 1<<10))
	registrytest.Push(t, known, "app:v1", img, nil)
	registrytest.Push(t, unknown, "app:v1", img, nil)
	cfg := testConfig(t)
	cfg.Credentials = map[string]credential.Credential{
		known:            credential.Basic("", "alice", "s3cret"),
		"*.example.test": credential.Basic("", "bob", "s3cret"),
	}
	prom := prometheus.NewRegistry()
	h, err := Open(ctx, withMetrics(cfg, prom))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, ref := range []string{known + "/app:v1", unknown + "/app:v1"} {
		if _, err := h.Admin().Warm(ctx, ref, credential.Anonymous, 1, nil); err != nil {
			t.Fatalf("Warm(%s): %v", ref, err)
		}
	}
	for _, host := range []string{known, registry.OtherHost} {
		if n, ok := gauge(t, prom, "strata_registry_requests_total", map[string]string{"host": host, "method": "GET", "status": "200"}); !ok || n < 1 {
			t.Errorf("strata_registry_requests_total{host=%q,GET,200} = %v (present %v), want >= 1", host, n, ok)
		}
	}
	if _, ok := gauge(t, prom, "strata_registry_requests_total", map[string]string{"host": unknown}); ok {
		t.Errorf("strata_registry_requests_total names %s, which nobody configured", unknown)
	}
}
