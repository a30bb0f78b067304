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

// pushed is an image pushed to a test registry.
type pushed struct {
	ref      registry.Reference
	manifest blob.Digest
	layer    []byte
	layerD   blob.Digest
}

func pushImage(t *testing.T, host, repoTag string, layerSize int) pushed {
	t.Helper()
	layer := registrytest.RandomBytes(t, layerSize)
	img := registrytest.Image(t, layer)
	d := registrytest.Push(t, host, repoTag, img, nil)
	return pushed{ref: mustRef(t, host+"/"+repoTag), manifest: blob.Digest(d.String()), layer: layer, layerD: blob.FromBytes(layer)}
}

func TestResolveManifestBlobInProcess(t *testing.T) {
	var cnt registrytest.Counter
	host := registrytest.InProcess(t, cnt.Wrap)
	p := pushImage(t, host, "app/one:v1", 4096)
	r := newClient(t, func(c *registry.Config) { c.MetricHosts = []string{host} })
	ctx := context.Background()
	cnt.Reset()

	desc, err := r.c.Resolve(ctx, p.ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != p.manifest || desc.MediaType != "application/vnd.oci.image.manifest.v1+json" || desc.Size <= 0 {
		t.Fatalf("Resolve = %+v, want digest %s, OCI manifest", desc, p.manifest)
	}
	if got := cnt.Count("HEAD", "manifest"); got != 1 || cnt.Count("GET", "manifest") != 0 {
		t.Fatalf("Resolve made %d manifest HEADs and %d GETs, want 1 and 0", got, cnt.Count("GET", "manifest"))
	}

	for _, ref := range []registry.Reference{p.ref, mustRef(t, host+"/app/one@"+string(p.manifest))} {
		b, d, err := r.c.Manifest(ctx, ref, nil)
		if err != nil {
			t.Fatalf("Manifest(%s): %v", ref, err)
		}
		if blob.FromBytes(b) != p.manifest || d.Digest != p.manifest || d.Size != int64(len(b)) || d.MediaType != desc.MediaType {
			t.Fatalf("Manifest(%s) = %+v", ref, d)
		}
		if !bytes.Contains(b, []byte(p.layerD)) {
			t.Fatalf("manifest does not mention the layer")
		}
	}

	got, err := readBlob(t, r.c, p.ref, p.layerD, int64(len(p.layer)))
	if err != nil || !bytes.Equal(got, p.layer) {
		t.Fatalf("Blob: err %v, %d bytes, equal %v", err, len(got), bytes.Equal(got, p.layer))
	}
	// Size unknown: the Content-Length is used.
	got, err = readBlob(t, r.c, p.ref, p.layerD, -1)
	if err != nil || !bytes.Equal(got, p.layer) {
		t.Fatalf("Blob(size -1): err %v", err)
	}
	if n := r.metric(t, "strata_registry_requests_total", map[string]string{"host": host, "method": "GET", "status": "200"}); n < 4 {
		t.Fatalf("requests_total{GET,200} = %v, want >= 4\n%s", n, r.dump(t))
	}
	if n := r.metric(t, "strata_registry_response_bytes_total", map[string]string{"host": host, "method": "GET"}); n < float64(2*len(p.layer)) {
		t.Fatalf("response_bytes_total = %v, want >= %d", n, 2*len(p.layer))
	}
}

func TestNotFound(t *testing.T) {
	host := registrytest.InProcess(t)
	p := pushImage(t, host, "app/one:v1", 100)
	r := newClient(t, nil)
	ctx := context.Background()
	tests := []struct {
		desc string
		call func() error
	}{
		{"unknown tag resolve", func() error { _, err := r.c.Resolve(ctx, mustRef(t, host+"/app/one:nope"), nil); return err }},
		{"unknown tag manifest", func() error { _, _, err := r.c.Manifest(ctx, mustRef(t, host+"/app/one:nope"), nil); return err }},
		{"unknown repo", func() error { _, _, err := r.c.Manifest(ctx, mustRef(t, host+"/app/none:v1"), nil); return err }},
		{"unknown blob", func() error {
			_, err := readBlob(t, r.c, p.ref, blob.FromBytes([]byte("nope")), 4)
			return err
		}},
		{"check access, unknown tag", func() error { return r.c.CheckAccess(ctx, mustRef(t, host+"/app/one:nope"), nil) }},
	}
	for _, tt := range tests {
		err := tt.call()
		if !errors.Is(err, registry.ErrNotFound) || !errors.Is(err, blob.ErrNotFound) {
			t.Errorf("%s: err = %v, want ErrNotFound (and blob.ErrNotFound)", tt.desc, err)
		}
		if err != nil && !strings.Contains(err.Error(), host) {
			t.Errorf("%s: error %q does not name the host", tt.desc, err)
		}
	}
}

func TestResolveFallsBackToGETWithoutDigestHeader(t *testing.T) {
	host := registrytest.InProcess(t)
	p := pushImage(t, host, "app/one:v1", 100)
	px := registrytest.NewProxy(t, host)
	px.Inject(registrytest.Fault{Method: "HEAD", Kind: "manifest", DropDigestHeader: true})
	r := newClient(t, nil)
	desc, err := r.c.Resolve(context.Background(), mustRef(t, px.Host()+"/app/one:v1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != p.manifest {
		t.Fatalf("digest %s, want %s", desc.Digest, p.manifest)
	}
	if px.Count("HEAD", "manifest") != 1 || px.Count("GET", "manifest") != 1 {
		t.Fatalf("HEAD %d GET %d, want 1 and 1", px.Count("HEAD", "manifest"), px.Count("GET", "manifest"))
	}
}

func TestManifestChecks(t *testing.T) {
	host := registrytest.InProcess(t)
	p := pushImage(t, host, "app/one:v1", 100)
	ctx := context.Background()

	t.Run("wrong bytes for a digest are rejected", func(t *testing.T) {
		px := registrytest.NewProxy(t, host)
		px.Inject(registrytest.Fault{Method: "GET", Kind: "manifest", Corrupt: true})
		r := newClient(t, nil)
		_, _, err := r.c.Manifest(ctx, mustRef(t, px.Host()+"/app/one@"+string(p.manifest)), nil)
		var me *blob.MismatchError
		if !errors.As(err, &me) || me.Want != p.manifest {
			t.Fatalf("err = %v, want *blob.MismatchError for %s", err, p.manifest)
		}
	})
	t.Run("body disagreeing with Docker-Content-Digest for a tag is rejected", func(t *testing.T) {
		px := registrytest.NewProxy(t, host)
		px.Inject(registrytest.Fault{Method: "GET", Kind: "manifest", Corrupt: true})
		r := newClient(t, nil)
		_, _, err := r.c.Manifest(ctx, mustRef(t, px.Host()+"/app/one:v1"), nil)
		if !errors.Is(err, blob.ErrMismatch) {
			t.Fatalf("err = %v, want ErrMismatch", err)
		}
	})
	t.Run("size cap", func(t *testing.T) {
		r := newClient(t, func(c *registry.Config) { c.MaxManifestSize = 64 })
		_, _, err := r.c.Manifest(ctx, p.ref, nil)
		if !errors.Is(err, registry.ErrTooLarge) || !errors.Is(err, blob.ErrTooLarge) {
			t.Fatalf("Manifest err = %v, want ErrTooLarge", err)
		}
		_, err = r.c.Resolve(ctx, p.ref, nil)
		if !errors.Is(err, registry.ErrTooLarge) {
			t.Fatalf("Resolve err = %v, want ErrTooLarge", err)
		}
	})
}

func TestBlobChecks(t *testing.T) {
	host := registrytest.InProcess(t)
	p := pushImage(t, host, "app/one:v1", 10000)
	ctx := context.Background()

	t.Run("wrong bytes rejected at EOF", func(t *testing.T) {
		px := registrytest.NewProxy(t, host)
		px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Corrupt: true})
		r := newClient(t, nil)
		_, err := readBlob(t, r.c, mustRef(t, px.Host()+"/app/one:v1"), p.layerD, int64(len(p.layer)))
		var me *blob.MismatchError
		if !errors.As(err, &me) || me.Want != p.layerD || !strings.Contains(err.Error(), px.Host()) {
			t.Fatalf("err = %v, want *blob.MismatchError naming the host", err)
		}
	})
	t.Run("wrong size rejected before reading", func(t *testing.T) {
		r := newClient(t, nil)
		_, err := r.c.Blob(ctx, p.ref.Repo(), p.layerD, int64(len(p.layer))+1, nil)
		if !errors.Is(err, blob.ErrMismatch) {
			t.Fatalf("err = %v, want ErrMismatch", err)
		}
	})
	t.Run("size cap on the declared size", func(t *testing.T) {
		r := newClient(t, func(c *registry.Config) { c.MaxBlob = 1000 })
		_, err := r.c.Blob(ctx, p.ref.Repo(), p.layerD, int64(len(p.layer)), nil)
		if !errors.Is(err, registry.ErrTooLarge) {
			t.Fatalf("err = %v, want ErrTooLarge", err)
		}
		_, err = readBlob(t, r.c, p.ref, p.layerD, -1)
		if !errors.Is(err, registry.ErrTooLarge) {
			t.Fatalf("unknown size: err = %v, want ErrTooLarge from Content-Length", err)
		}
	})
	t.Run("invalid digest", func(t *testing.T) {
		r := newClient(t, nil)
		_, err := r.c.Blob(ctx, p.ref.Repo(), "sha512:abc", 1, nil)
		if !errors.Is(err, blob.ErrInvalidDigest) {
			t.Fatalf("err = %v, want ErrInvalidDigest", err)
		}
	})
}

func TestBlobResumeInProcess(t *testing.T) {
	host := registrytest.InProcess(t)
	p := pushImage(t, host, "app/one:v1", 1<<20)
	px := registrytest.NewProxy(t, host)
	px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Times: 1, TruncateAfter: 300000})
	r := newClient(t, nil)
	got, err := readBlob(t, r.c, mustRef(t, px.Host()+"/app/one:v1"), p.layerD, int64(len(p.layer)))
	if err != nil || !bytes.Equal(got, p.layer) {
		t.Fatalf("err %v, equal %v", err, bytes.Equal(got, p.layer))
	}
	want := []string{"bytes=300000-1048575"}
	if rg := px.Ranged(); len(rg) != 1 || rg[0] != want[0] {
		t.Fatalf("ranged requests %q, want %q", rg, want)
	}
	if px.Count("GET", "blob") != 2 {
		t.Fatalf("blob GETs %d, want 2", px.Count("GET", "blob"))
	}
	if n := r.metric(t, "strata_registry_blob_resumes_total", nil); n != 1 {
		t.Fatalf("resumes metric %v, want 1", n)
	}
}

func TestBlobResumeLimits(t *testing.T) {
	host := registrytest.InProcess(t)
	p := pushImage(t, host, "app/one:v1", 100000)
	t.Run("resumed bytes that do not match are rejected", func(t *testing.T) {
		px := registrytest.NewProxy(t, host)
		px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Times: 1, TruncateAfter: 5000})
		px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Ranged: true, Times: 1, Corrupt: true})
		r := newClient(t, nil)
		_, err := readBlob(t, r.c, mustRef(t, px.Host()+"/app/one:v1"), p.layerD, int64(len(p.layer)))
		if !errors.Is(err, blob.ErrMismatch) {
			t.Fatalf("err = %v, want ErrMismatch", err)
		}
	})
	t.Run("bounded resumes", func(t *testing.T) {
		px := registrytest.NewProxy(t, host)
		px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", TruncateAfter: 10})
		r := newClient(t, func(c *registry.Config) { c.MaxResumes = 2 })
		_, err := readBlob(t, r.c, mustRef(t, px.Host()+"/app/one:v1"), p.layerD, int64(len(p.layer)))
		if !errors.Is(err, registry.ErrUnreachable) {
			t.Fatalf("err = %v, want ErrUnreachable", err)
		}
		if px.Count("GET", "blob") != 3 {
			t.Fatalf("blob GETs %d, want 3 (1 + 2 resumes)", px.Count("GET", "blob"))
		}
	})
	t.Run("a registry ignoring Range is accepted", func(t *testing.T) {
		// Strip the Range header so the registry answers 200 with the
		// whole blob; the client skips what it already has.
		px := registrytest.NewProxy(t, host)
		px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Times: 1, TruncateAfter: 5000})
		px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Times: 1, StripRange: true})
		r := newClient(t, nil)
		got, err := readBlob(t, r.c, mustRef(t, px.Host()+"/app/one:v1"), p.layerD, int64(len(p.layer)))
		if err != nil || !bytes.Equal(got, p.layer) {
			t.Fatalf("err = %v", err)
		}
		if px.Count("GET", "blob") != 2 || len(px.Ranged()) != 1 {
			t.Fatalf("GETs %d ranged %q, want 2 and 1", px.Count("GET", "blob"), px.Ranged())
		}
	})
}

func TestRetries(t *testing.T) {
	host := registrytest.InProcess(t)
	p := pushImage(t, host, "app/one:v1", 100)
	ctx := context.Background()

	t.Run("500s then success", func(t *testing.T) {
		px := registrytest.NewProxy(t, host)
		px.Inject(registrytest.Fault{Method: "GET", Kind: "manifest", Times: 2, Status: http.StatusInternalServerError})
		r := newClient(t, nil)
		if _, _, err := r.c.Manifest(ctx, mustRef(t, px.Host()+"/app/one:v1"), nil); err != nil {
			t.Fatal(err)
		}
		if n := px.Count("GET", "manifest"); n != 3 {
			t.Fatalf("manifest GETs %d, want 3", n)
		}
		s := r.sleeps.all()
		if len(s) != 2 || s[0] < registry.DefaultBaseDelay/2 || s[0] > registry.DefaultBaseDelay || s[1] < registry.DefaultBaseDelay || s[1] > 2*registry.DefaultBaseDelay {
			t.Fatalf("backoff waits %v, want 2 growing jittered waits", s)
		}
		if n := r.metric(t, "strata_registry_retries_total", map[string]string{"reason": "500"}); n != 2 {
			t.Fatalf("retries metric %v, want 2", n)
		}
	})
	for _, tc := range []struct {
		desc       string
		retryAfter string
		min, max   time.Duration
	}{
		{"429 with Retry-After seconds", "7", 7 * time.Second, 7 * time.Second},
		{"429 with Retry-After HTTP-date", time.Now().Add(9 * time.Second).UTC().Format(http.TimeFormat), 5 * time.Second, 10 * time.Second},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			px := registrytest.NewProxy(t, host)
			px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Times: 1, Status: http.StatusTooManyRequests, RetryAfter: tc.retryAfter})
			r := newClient(t, nil)
			got, err := readBlob(t, r.c, mustRef(t, px.Host()+"/app/one:v1"), p.layerD, int64(len(p.layer)))
			if err != nil || !bytes.Equal(got, p.layer) {
				t.Fatal(err)
			}
			if n := px.Count("GET", "blob"); n != 2 {
				t.Fatalf("blob GETs %d, want 2", n)
			}
			s := r.sleeps.all()
			if len(s) != 1 || s[0] < tc.min || s[0] > tc.max {
				t.Fatalf("waits %v, want one in [%v, %v]", s, tc.min, tc.max)
			}
		})
	}
	t.Run("Retry-After beyond the cap is not waited for", func(t *testing.T) {
		px := registrytest.NewProxy(t, host)
		px.Inject(registrytest.Fault{Method: "GET", Kind: "manifest", Status: http.StatusTooManyRequests, RetryAfter: "3600"})
		r := newClient(t, nil)
		_, _, err := r.c.Manifest(ctx, mustRef(t, px.Host()+"/app/one:v1"), nil)
		if !errors.Is(err, registry.ErrUnreachable) || px.Count("GET", "manifest") != 1 || len(r.sleeps.all()) != 0 {
			t.Fatalf("err %v, GETs %d, waits %v", err, px.Count("GET", "manifest"), r.sleeps.all())
		}
	})
	t.Run("attempts are bounded", func(t *testing.T) {
		px := registrytest.NewProxy(t, host)
		px.Inject(registrytest.Fault{Method: "GET", Kind: "manifest", Status: http.StatusServiceUnavailable})
		r := newClient(t, func(c *registry.Config) { c.MaxAttempts = 3 })
		_, _, err := r.c.Manifest(ctx, mustRef(t, px.Host()+"/app/one:v1"), nil)
		if !errors.Is(err, registry.ErrUnreachable) || px.Count("GET", "manifest") != 3 {
			t.Fatalf("err %v, GETs %d, want ErrUnreachable after 3", err, px.Count("GET", "manifest"))
		}
	})
	t.Run("no retry on 404", func(t *testing.T) {
		px := registrytest.NewProxy(t, host)
		r := newClient(t, nil)
		_, _, err := r.c.Manifest(ctx, mustRef(t, px.Host()+"/app/one:none"), nil)
		if !errors.Is(err, registry.ErrNotFound) || px.Count("GET", "manifest") != 1 {
			t.Fatalf("err %v, GETs %d", err, px.Count("GET", "manifest"))
		}
	})
	t.Run("connection reset then success", func(t *testing.T) {
		px := registrytest.NewProxy(t, host)
		// Abort the connection before any body byte: the client sees the
		// connection drop while reading the response.
		px.Inject(registrytest.Fault{Method: "GET", Kind: "manifest", Times: 1, Abort: true})
		r := newClient(t, nil)
		if _, _, err := r.c.Manifest(ctx, mustRef(t, px.Host()+"/app/one:v1"), nil); err != nil {
			t.Fatal(err)
		}
		if n := px.Count("GET", "manifest"); n != 2 {
			t.Fatalf("GETs %d, want 2", n)
		}
	})
}
