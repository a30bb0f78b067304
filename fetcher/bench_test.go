package fetcher_test

import (
	"context"
	"testing"

	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry/credential"
)

// BenchmarkWarmFetch measures FetchImage of a cached 10-layer image with a
// valid proof: no network request, every answer from the tiers.
func BenchmarkWarmFetch(b *testing.B) {
	e := newEnv(b, envOpts{})
	var layers [][]byte
	for i := 0; i < 10; i++ {
		layers = append(layers, registrytest.RandomBytes(b, 1024))
	}
	registrytest.Push(b, e.host, "bench/img:v1", registrytest.Image(b, layers...), nil)
	ctx := context.Background()
	ref := e.ref("bench/img:v1")
	if _, err := e.f.FetchImage(ctx, ref, credential.Anonymous); err != nil {
		b.Fatal(err)
	}
	e.counter.Reset()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := e.f.FetchImage(ctx, ref, credential.Anonymous); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if n := e.requests(); n != 0 {
		b.Fatalf("warm fetches made %d registry requests", n)
	}
}
