package fetcher

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-oci/strata/registry"
)

// Metric names.
const (
	MetricFetchDuration = "strata_fetch_duration_seconds"
	MetricCollapsed     = "strata_fetch_collapsed_total"
	MetricProofs        = "strata_fetch_access_proofs_total"
	MetricBytesAvoided  = "strata_fetch_registry_bytes_avoided_total"
	MetricLeases        = "strata_fetch_leases_total"
)

type metrics struct {
	duration     *prometheus.HistogramVec // outcome, source
	collapsed    prometheus.Counter
	proofs       *prometheus.CounterVec // result: made, hit, denied, offline
	bytesAvoided prometheus.Counter
	leases       *prometheus.CounterVec // event (see lease.go)
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    MetricFetchDuration,
			Help:    "FetchImage latency by outcome and by where resolution was answered (cache or registry).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"outcome", "source"}),
		collapsed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: MetricCollapsed,
			Help: "FetchImage calls that joined an identical fetch in progress.",
		}),
		proofs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricProofs,
			Help: "Access proofs: made at the registry, hit in the cache, denied by the registry, used while the registry was unreachable.",
		}, []string{"result"}),
		bytesAvoided: prometheus.NewCounter(prometheus.CounterOpts{
			Name: MetricBytesAvoided,
			Help: "Layer bytes served from a tier instead of the registry.",
		}),
		leases: newLeaseMetric(),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.duration, m.collapsed, m.proofs, m.bytesAvoided, m.leases} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, registry.ErrDenied):
		return "denied"
	case errors.Is(err, registry.ErrNotFound):
		return "not_found"
	case errors.Is(err, registry.ErrUnreachable):
		return "unreachable"
	default:
		return "error"
	}
}
