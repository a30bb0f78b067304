package registry

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the client's Prometheus collectors. Labels carry registry
// hosts, HTTP methods and statuses and fixed reason strings, never a
// credential, repository or URL. A host label is a configured host (see
// Config.MetricHosts) or OtherHost, so callers that fetch from hosts of
// their choosing cannot add series without bound.
type metrics struct {
	hosts map[string]bool // configured hosts, lower case

	requests  *prometheus.CounterVec // host, method, status
	bytes     *prometheus.CounterVec // host, method, status
	retries   *prometheus.CounterVec // host, reason
	fallbacks *prometheus.CounterVec // registry, mirror, reason
	resumes   *prometheus.CounterVec // host
	parts     *prometheus.CounterVec // host
	stalls    *prometheus.CounterVec // host, reason
}

// OtherHost is the host label of registry metrics for every host that is
// not configured (see Config.MetricHosts).
const OtherHost = "other"

// dockerHubHosts are the names Docker Hub goes by; configuring one labels
// them all.
var dockerHubHosts = []string{"docker.io", "index.docker.io", "registry-1.docker.io"}

// metricHosts returns the hosts that label metrics by name: the registries
// with mirrors, their mirrors' endpoints and cfg.MetricHosts, lower case. An
// entry of MetricHosts that is not a host[:port] is an error.
func metricHosts(cfg *Config) (map[string]bool, error) {
	hosts := map[string]bool{}
	add := func(h string) {
		h = strings.ToLower(h)
		hosts[h] = true
		for _, d := range dockerHubHosts {
			if h == d {
				for _, a := range dockerHubHosts {
					hosts[a] = true
				}
			}
		}
	}
	for reg, ms := range cfg.Mirrors {
		add(reg)
		for _, m := range ms {
			add(m.Endpoint)
		}
	}
	for i, h := range cfg.MetricHosts {
		if !registryRE.MatchString(h) {
			return nil, fmt.Errorf("registry: Config.MetricHosts[%d]: bad host %q (want host[:port])", i, clip(h))
		}
		add(h)
	}
	return hosts, nil
}

// host is the label for a request to h: h if it is configured, else
// OtherHost.
func (m *metrics) host(h string) string {
	if h = strings.ToLower(h); m.hosts[h] {
		return h
	}
	return OtherHost
}

func newMetrics(reg prometheus.Registerer, hosts map[string]bool) (*metrics, error) {
	m := &metrics{
		hosts: hosts,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "strata", Subsystem: "registry", Name: "requests_total",
			Help: "HTTP requests sent to registries (every attempt, including token and ping requests), by host (a configured registry or mirror, else \"other\"), method and status (\"error\" when no response).",
		}, []string{"host", "method", "status"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "strata", Subsystem: "registry", Name: "response_bytes_total",
			Help: "Response body bytes read from registries, by host, method and status.",
		}, []string{"host", "method", "status"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "strata", Subsystem: "registry", Name: "retries_total",
			Help: "HTTP requests retried, by host and reason (status code or \"connection\").",
		}, []string{"host", "reason"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "strata", Subsystem: "registry", Name: "mirror_fallbacks_total",
			Help: "Times a mirror could not serve and the next mirror or the origin was tried, by registry, mirror and reason.",
		}, []string{"registry", "mirror", "reason"}),
		resumes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "strata", Subsystem: "registry", Name: "blob_resumes_total",
			Help: "Interrupted blob downloads resumed with a new request, by host.",
		}, []string{"host"}),
		parts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "strata", Subsystem: "registry", Name: "blob_parts_total",
			Help: "Parts of blobs requested with a Range request of their own by parallel reads (see ParallelConfig), by host.",
		}, []string{"host"}),
		stalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "strata", Subsystem: "registry", Name: "stalled_responses_total",
			Help: "Response bodies abandoned because the server sent nothing for the idle timeout (reason \"idle\") or sent below the minimum rate (\"slow\"), by host.",
		}, []string{"host", "reason"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.bytes, m.retries, m.fallbacks, m.resumes, m.parts, m.stalls} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// metricsTransport counts every request attempt and the response bytes read.
type metricsTransport struct {
	inner http.RoundTripper
	m     *metrics
}

func (t *metricsTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.inner.RoundTrip(req)
	host := t.m.host(req.URL.Host)
	if err != nil {
		t.m.requests.WithLabelValues(host, req.Method, "error").Inc()
		return nil, err
	}
	status := strconv.Itoa(resp.StatusCode)
	t.m.requests.WithLabelValues(host, req.Method, status).Inc()
	resp.Body = &countingBody{ReadCloser: resp.Body, c: t.m.bytes.WithLabelValues(host, req.Method, status)}
	return resp, nil
}

type countingBody struct {
	io.ReadCloser
	c prometheus.Counter
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.c.Add(float64(n))
	}
	return n, err
}
