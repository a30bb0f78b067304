package fetcher_test

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/registry/credential"
)

// The fetcher's metrics count what happened: proofs made, hit and denied,
// fetch outcomes by source, and layer bytes served without the registry.
func TestMetrics(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{})
	_, img := threeLayers(t)
	e.push(t, "private/app:v1", img)
	ref := e.ref("private/app:v1")

	im, err := e.f.FetchImage(ctx, ref, alice()) // proof made, from the registry
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := readLayers(ctx, im); err != nil { // from the registry: nothing avoided
		t.Fatal(err)
	}
	im, err = e.f.FetchImage(ctx, ref, alice()) // proof hit, from the cache
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := readLayers(ctx, im); err != nil { // every layer from memory
		t.Fatal(err)
	}
	if _, err := e.f.FetchImage(ctx, ref, credential.Anonymous); !errors.Is(err, registry.ErrDenied) {
		t.Fatalf("anonymous = %v, want denied", err)
	}

	var layerBytes int64
	for _, l := range im.Layers() {
		layerBytes += l.Size()
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{fetcher.MetricProofs, map[string]string{"result": "made"}, 1},
		{fetcher.MetricProofs, map[string]string{"result": "hit"}, 1},
		{fetcher.MetricProofs, map[string]string{"result": "denied"}, 1},
		{fetcher.MetricBytesAvoided, nil, float64(layerBytes)},
		{fetcher.MetricFetchDuration, map[string]string{"outcome": "ok", "source": "registry"}, 1},
		{fetcher.MetricFetchDuration, map[string]string{"outcome": "ok", "source": "cache"}, 1},
		{fetcher.MetricFetchDuration, map[string]string{"outcome": "denied", "source": "registry"}, 1},
	} {
		if got := sample(t, e.reg, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

// sample returns a counter's value, or a histogram's sample count, for the
// series of name whose labels include labels.
func sample(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if matches(m, labels) {
				if h := m.GetHistogram(); h != nil {
					return float64(h.GetSampleCount())
				}
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func matches(m *dto.Metric, want map[string]string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}
