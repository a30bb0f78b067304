package registry_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry"
)

func TestPolicyDeniesLoopbackByDefault(t *testing.T) {
	var cnt registrytest.Counter
	host := registrytest.InProcess(t, cnt.Wrap)
	pushImage(t, host, "app/one:v1", 100)
	cnt.Reset()
	port := host[strings.LastIndexByte(host, ':')+1:]
	for _, h := range []string{host, "localhost:" + port} { // an IP literal, and a DNS name resolving to loopback
		r := newClient(t, func(c *registry.Config) { c.AllowCIDRs = nil })
		_, err := r.c.Resolve(context.Background(), mustRef(t, h+"/app/one:v1"), nil)
		if !errors.Is(err, registry.ErrDeniedAddress) || !strings.Contains(err.Error(), "127.0.0.1") {
			t.Fatalf("%s: err = %v, want ErrDeniedAddress naming 127.0.0.1", h, err)
		}
		if err := r.c.CheckAccess(context.Background(), mustRef(t, h+"/app/one:v1"), nil); !errors.Is(err, registry.ErrDeniedAddress) {
			t.Fatalf("%s: CheckAccess err = %v", h, err)
		}
	}
	if n := cnt.Count("GET", "ping") + cnt.Count("HEAD", "manifest"); n != 0 {
		t.Fatalf("the registry saw %d requests, want 0", n)
	}
}

func TestRedirectToDeniedAddressRefused(t *testing.T) {
	host := registrytest.InProcess(t)
	p := pushImage(t, host, "app/one:v1", 100)
	for _, target := range []string{
		"http://169.254.169.254/latest/meta-data/",
		"http://10.0.0.1/blob",
		"http://[::ffff:169.254.169.254]/x",
	} {
		px := registrytest.NewProxy(t, host)
		px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", RedirectTo: target})
		r := newClient(t, nil)
		_, err := readBlob(t, r.c, mustRef(t, px.Host()+"/app/one:v1"), p.layerD, int64(len(p.layer)))
		if !errors.Is(err, registry.ErrDeniedAddress) {
			t.Fatalf("redirect to %s: err = %v, want ErrDeniedAddress", target, err)
		}
		if n := px.Count("GET", "blob"); n != 1 {
			t.Fatalf("redirect to %s: blob GETs %d, want 1 (a policy denial is not retried)", target, n)
		}
	}
	// A redirect to an allowed address is followed (a storage host).
	px := registrytest.NewProxy(t, host)
	px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Times: 1, RedirectTo: "http://" + host + "/v2/app/one/blobs/" + string(p.layerD)})
	r := newClient(t, nil)
	if _, err := readBlob(t, r.c, mustRef(t, px.Host()+"/app/one:v1"), p.layerD, int64(len(p.layer))); err != nil {
		t.Fatalf("allowed redirect: %v", err)
	}
}

func TestProxyTargetChecked(t *testing.T) {
	// A forward proxy on loopback (allowed); the target is a private address
	// (denied): the request must not reach the proxy.
	var cnt registrytest.Counter
	proxyHost := registrytest.InProcess(t, cnt.Wrap)
	proxyURL, _ := url.Parse("http://" + proxyHost)
	r := newClient(t, func(c *registry.Config) {
		c.Proxy = func(*http.Request) (*url.URL, error) { return proxyURL, nil }
	})
	_, err := r.c.Resolve(context.Background(), mustRef(t, "10.20.30.40:5000/app/one:v1"), nil)
	if !errors.Is(err, registry.ErrDeniedAddress) || !strings.Contains(err.Error(), "10.20.30.40") {
		t.Fatalf("err = %v, want ErrDeniedAddress naming the target", err)
	}
	if n := cnt.Count("GET", "ping") + cnt.Count("GET", "other") + cnt.Count("CONNECT", "other"); n != 0 {
		t.Fatalf("proxy saw %d requests", n)
	}

	// The proxy's own address goes through the policy at dial time.
	r = newClient(t, func(c *registry.Config) {
		c.AllowCIDRs = []string{"10.0.0.0/8"}
		c.Proxy = func(*http.Request) (*url.URL, error) { return proxyURL, nil }
	})
	_, err = r.c.Resolve(context.Background(), mustRef(t, "10.20.30.40:5000/app/one:v1"), nil)
	if !errors.Is(err, registry.ErrDeniedAddress) || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("err = %v, want ErrDeniedAddress naming the proxy address", err)
	}
}

func TestProxyForwards(t *testing.T) {
	// A plain-HTTP forward proxy: the client sends absolute-URI requests to
	// it; the target (loopback, allowed) is checked and the request served.
	host := registrytest.InProcess(t)
	p := pushImage(t, host, "app/one:v1", 100)
	var seen registrytest.Counter
	fwd := registrytest.InProcess(t, func(http.Handler) http.Handler {
		return seen.Wrap(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			out, _ := http.NewRequestWithContext(req.Context(), req.Method, req.URL.String(), nil)
			out.Header = req.Header.Clone()
			resp, err := http.DefaultTransport.RoundTrip(out)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			defer resp.Body.Close()
			for k, v := range resp.Header {
				w.Header()[k] = v
			}
			w.WriteHeader(resp.StatusCode)
			buf := make([]byte, 32<<10)
			for {
				n, err := resp.Body.Read(buf)
				w.Write(buf[:n])
				if err != nil {
					return
				}
			}
		}))
	})
	proxyURL, _ := url.Parse("http://" + fwd)
	r := newClient(t, func(c *registry.Config) {
		c.Proxy = func(*http.Request) (*url.URL, error) { return proxyURL, nil }
	})
	desc, err := r.c.Resolve(context.Background(), p.ref, nil)
	if err != nil || desc.Digest != p.manifest {
		t.Fatalf("Resolve through proxy: %v %v", desc, err)
	}
	if seen.Count("HEAD", "manifest") != 1 {
		t.Fatalf("proxy saw %d manifest HEADs, want 1", seen.Count("HEAD", "manifest"))
	}
}

func TestStorageRefusalIsNotADenial(t *testing.T) {
	host := registrytest.InProcess(t)
	p := pushImage(t, host, "app/one:v1", 100)
	storage := registrytest.InProcess(t, func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusForbidden) })
	})
	px := registrytest.NewProxy(t, host)
	px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", RedirectTo: "http://" + storage + "/signed-url"})
	r := newClient(t, nil)
	_, err := readBlob(t, r.c, mustRef(t, px.Host()+"/app/one:v1"), p.layerD, int64(len(p.layer)))
	if errors.Is(err, registry.ErrDenied) || !errors.Is(err, registry.ErrUnreachable) || !strings.Contains(err.Error(), storage) {
		t.Fatalf("err = %v, want ErrUnreachable naming the storage host, not ErrDenied", err)
	}
}
