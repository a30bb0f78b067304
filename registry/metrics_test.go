package registry_test

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"testing"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"

	"github.com/strata-oci/strata/registry"
)

// serveOn serves h on a new port of 127.0.0.1 and returns its
// "127.0.0.1:port": another registry host, as far as a client can tell.
func serveOn(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// TestMetricHostLabelIsBounded fetches from 100 hosts nobody configured
// and checks that they share the host label "other", while the configured
// hosts (MetricHosts, a registry with mirrors and its mirror) keep their
// names: a caller who picks the hosts cannot add series without bound.
func TestMetricHostLabelIsBounded(t *testing.T) {
	// One registry, reachable at 103 hosts (ports).
	h := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	addrs := make([]string, 103)
	for i := range addrs {
		addrs[i] = serveOn(t, h)
	}
	p := pushImage(t, addrs[0], "app:v1", 1024)
	configured, withMirror, mirror := addrs[0], addrs[1], addrs[2]
	random := addrs[3:]

	r := newClient(t, func(c *registry.Config) {
		c.MetricHosts = []string{strings.ToUpper(configured)}
		c.Mirrors = map[string][]registry.Mirror{withMirror: {{Endpoint: mirror}}}
	})
	ctx := context.Background()
	for _, host := range addrs {
		ref := mustRef(t, host+"/app@"+string(p.manifest))
		if _, _, err := r.c.Manifest(ctx, ref, nil); err != nil {
			t.Fatalf("Manifest(%s): %v", ref, err)
		}
	}
	// And one host that does not answer: an error, a retry.
	dead := serveOn(t, http.NotFoundHandler())
	if _, _, err := r.c.Manifest(ctx, mustRef(t, dead+"/app:v1"), nil); err == nil {
		t.Fatal("Manifest from a registry that has nothing: no error")
	}

	allowed := map[string]bool{configured: true, withMirror: true, mirror: true, registry.OtherHost: true}
	fams, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), "strata_registry_") {
			continue
		}
		if f.GetName() == "strata_registry_requests_total" && len(f.GetMetric()) > 12 {
			t.Errorf("%s has %d series, want at most 12 (4 hosts x a few methods and statuses)\n%s", f.GetName(), len(f.GetMetric()), r.dump(t))
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() != "host" && l.GetName() != "registry" && l.GetName() != "mirror" {
					continue
				}
				seen[l.GetValue()] = true
				if !allowed[l.GetValue()] {
					t.Errorf("%s{%s=%q}: not a configured host", f.GetName(), l.GetName(), l.GetValue())
				}
			}
		}
	}
	if len(seen) > len(allowed) {
		t.Errorf("%d distinct host labels, want at most %d", len(seen), len(allowed))
	}
	// The configured hosts are named (the mirror served withMirror's
	// digest), and the 100 others are counted, as "other".
	for _, host := range []string{configured, mirror} {
		if n := r.metric(t, "strata_registry_requests_total", map[string]string{"host": host, "method": "GET", "status": "200"}); n < 1 {
			t.Errorf("requests_total{host=%q,GET,200} = %v, want >= 1\n%s", host, n, r.dump(t))
		}
	}
	if n := r.metric(t, "strata_registry_requests_total", map[string]string{"host": registry.OtherHost, "method": "GET", "status": "200"}); n < float64(len(random)) {
		t.Errorf("requests_total{host=other,GET,200} = %v, want >= %d", n, len(random))
	}
	if n := r.metric(t, "strata_registry_requests_total", map[string]string{"host": registry.OtherHost, "status": "404"}); n < 1 {
		t.Errorf("requests_total{host=other,404} = %v, want >= 1 (the registry that has nothing)", n)
	}
}

func TestMetricHostsConfig(t *testing.T) {
	for _, tc := range []struct {
		desc  string
		hosts []string
		ok    bool
	}{
		{"a host", []string{"ghcr.io"}, true},
		{"upper case and a port", []string{"Registry.Example:5000"}, true},
		{"an IPv6 address", []string{"[::1]:5000"}, true},
		{"a URL", []string{"https://ghcr.io"}, false},
		{"a path", []string{"ghcr.io/acme"}, false},
		{"empty", []string{""}, false},
		{"a pattern", []string{"*.example.com"}, false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := registry.New(registry.Config{MetricHosts: tc.hosts})
			if tc.ok && err != nil {
				t.Fatalf("New: %v", err)
			}
			if !tc.ok && (err == nil || !strings.Contains(err.Error(), "MetricHosts[0]")) {
				t.Fatalf("New: err %v, want one naming MetricHosts[0]", err)
			}
		})
	}
}
