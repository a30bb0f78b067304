package registry_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry"
)

func TestNewRejectsBadConfig(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := registry.New(registry.Config{Metrics: reg}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		desc string
		cfg  registry.Config
	}{
		{"bad CIDR", registry.Config{AllowCIDRs: []string{"127.0.0.1"}}},
		{"bad mirror endpoint", registry.Config{Mirrors: map[string][]registry.Mirror{"docker.io": {{Endpoint: "http://mirror"}}}}},
		{"negative cap", registry.Config{MaxBlob: -1}},
		{"zero attempts", registry.Config{MaxAttempts: -1}},
		{"negative rate window", registry.Config{MinRateWindow: -1}},
		{"metrics registered twice", registry.Config{Metrics: reg}},
	}
	for _, tt := range tests {
		if _, err := registry.New(tt.cfg); err == nil {
			t.Errorf("%s: New accepted it", tt.desc)
		}
	}
}

func TestDockerHubMirrorAlias(t *testing.T) {
	// A mirror configured for "docker.io" serves Docker Hub references by
	// digest; the origin (index.docker.io) is never contacted because the
	// mirror has the manifest, so no internet is needed. (Tags resolve at
	// the origin only.)
	var cnt registrytest.Counter
	mirror := registrytest.InProcess(t, cnt.Wrap)
	p := pushImage(t, mirror, "library/ubuntu:latest", 1000)
	cnt.Reset()
	r := newClient(t, func(c *registry.Config) {
		c.Mirrors = map[string][]registry.Mirror{"docker.io": {{Endpoint: mirror}}}
	})
	ref := mustRef(t, "ubuntu@"+string(p.manifest))
	_, desc, err := r.c.Manifest(context.Background(), ref, nil)
	if err != nil || desc.Digest != p.manifest {
		t.Fatalf("Manifest(ubuntu@digest) via mirror: %v %v", desc, err)
	}
	if cnt.Count("GET", "manifest") != 1 {
		t.Fatalf("mirror manifest GETs %d", cnt.Count("GET", "manifest"))
	}
}

func BenchmarkBlob(b *testing.B) {
	const size = 8 << 20
	host := registrytest.InProcess(b)
	data := registrytest.RandomBytes(b, size)
	dg := blob.Digest(registrytest.PushBlob(b, host, "bench/blob", data, nil).String())
	c, err := registry.New(registry.Config{AllowCIDRs: []string{"127.0.0.0/8"}, Proxy: registry.NoProxy})
	if err != nil {
		b.Fatal(err)
	}
	repo, _ := registry.ParseRepository(host + "/bench/blob")
	b.ReportAllocs()
	benchBlob(b, c, repo, dg, size)
}

// benchBlob reads blob dg (size bytes) of repo b.N times, timed.
func benchBlob(b *testing.B, c *registry.Client, repo registry.Repository, dg blob.Digest, size int64) {
	buf := make([]byte, 256<<10)
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		rc, err := c.Blob(context.Background(), repo, dg, size, nil)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, rc, buf)
		rc.Close()
		if err != nil || n != size {
			b.Fatalf("read %d: %v", n, err)
		}
	}
}

// BenchmarkBlobBaselineHTTP is the baseline for BenchmarkBlob: the same
// blob read with a bare net/http GET and hashed with sha256 (the least a
// verified download costs), with no policy, metrics or resume machinery.
func BenchmarkBlobBaselineHTTP(b *testing.B) {
	const size = 8 << 20
	host := registrytest.InProcess(b)
	data := registrytest.RandomBytes(b, size)
	dg := registrytest.PushBlob(b, host, "bench/blob", data, nil).String()
	url := "http://" + host + "/v2/bench/blob/blobs/" + dg
	buf := make([]byte, 256<<10)
	b.ReportAllocs()
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, err := http.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		h := sha256.New()
		n, err := io.CopyBuffer(h, resp.Body, buf)
		resp.Body.Close()
		if err != nil || n != size || blob.NewDigestFromHash(h) != blob.Digest(dg) {
			b.Fatalf("read %d: %v", n, err)
		}
	}
}

func BenchmarkManifest(b *testing.B) {
	host := registrytest.InProcess(b)
	img := registrytest.Image(b, []byte("layer"))
	registrytest.Push(b, host, "bench/img:v1", img, nil)
	c, err := registry.New(registry.Config{AllowCIDRs: []string{"127.0.0.0/8"}, Proxy: registry.NoProxy})
	if err != nil {
		b.Fatal(err)
	}
	ref, _ := registry.ParseReference(host + "/bench/img:v1")
	raw, _ := img.RawManifest()
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for i := 0; i < b.N; i++ {
		got, _, err := c.Manifest(context.Background(), ref, nil)
		if err != nil || !bytes.Equal(got, raw) {
			b.Fatal(err)
		}
	}
}
