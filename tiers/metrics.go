package tiers

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics holds the Prometheus collectors of the tier boundary: what
// Instrument records for each tier and what a Stack records about itself.
// One Metrics may be shared by any number of tiers and stacks; series are
// told apart by the tier (or stack) name label. It is safe for concurrent
// use.
type Metrics struct {
	requests   *prometheus.CounterVec   // tier, op, result
	duration   *prometheus.HistogramVec // tier, op
	readBytes  *prometheus.CounterVec   // tier
	writeBytes *prometheus.CounterVec   // tier
	readErrors *prometheus.CounterVec   // tier, result
	collapsed  *prometheus.CounterVec   // stack
	writeBacks *prometheus.CounterVec   // stack, tier, result
	failovers  *prometheus.CounterVec   // stack, tier
	badCopies  *prometheus.CounterVec   // tier
	repairs    *prometheus.CounterVec   // tier, result
}

// Metric names registered by NewMetrics.
const (
	MetricRequests   = "strata_tier_requests_total"
	MetricDuration   = "strata_tier_request_duration_seconds"
	MetricReadBytes  = "strata_tier_read_bytes_total"
	MetricWriteBytes = "strata_tier_written_bytes_total"
	MetricReadErrors = "strata_tier_reader_errors_total"
	MetricCollapsed  = "strata_stack_collapsed_total"
	MetricWriteBacks = "strata_stack_writebacks_total"
	MetricFailovers  = "strata_stack_failovers_total"
	MetricBadCopies  = "strata_tier_bad_copies_total"
	MetricRepairs    = "strata_tier_repairs_total"
)

// NewMetrics creates the collectors and registers them on reg. Nothing is
// registered globally. A nil reg leaves them unregistered (they still
// count, which tests can read). Registering twice on one registry fails with
// the registry's error.
//
// Series (label values of result are listed in the Help texts):
//
//	strata_tier_requests_total{tier,op,result}
//	strata_tier_request_duration_seconds{tier,op}
//	strata_tier_read_bytes_total{tier}     bytes callers read from Open readers
//	strata_tier_written_bytes_total{tier}  bytes Put consumed from its source
//	strata_tier_reader_errors_total{tier,result}
//	strata_stack_collapsed_total{stack}    Opens that joined another's flight
//	strata_stack_writebacks_total{stack,tier,result}
//	strata_stack_failovers_total{stack,tier}  reads that went on past a tier failing mid-stream
//	strata_tier_bad_copies_total{tier}        copies found wrong (then skipped until repaired)
//	strata_tier_repairs_total{tier,result}    bad copies written over (ok, refused, error)
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricRequests,
			Help: "Tier operations by tier, op (stat, open, put, delete, walk, get_ref, put_ref, delete_ref, walk_refs) and result (hit, miss, ok, declined, unavailable, unsupported, mismatch, invalid, canceled, error).",
		}, []string{"tier", "op", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: MetricDuration,
			Help: "Latency of tier operations by tier and op; for open, the time until the reader is returned.",
			// 1us .. ~16s: memory hits sit at the bottom, remote reads at the top.
			Buckets: prometheus.ExponentialBuckets(1e-6, 4, 13),
		}, []string{"tier", "op"}),
		readBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricReadBytes,
			Help: "Bytes read by callers from readers returned by Open, by tier.",
		}, []string{"tier"}),
		writeBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricWriteBytes,
			Help: "Bytes consumed by Put from its source, by tier.",
		}, []string{"tier"}),
		readErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricReadErrors,
			Help: "Errors returned by Open readers while reading, by tier and result (mismatch, canceled, error).",
		}, []string{"tier", "result"}),
		collapsed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricCollapsed,
			Help: "Stack Opens that joined a concurrent fill of the same digest instead of reading a lower tier themselves.",
		}, []string{"stack"}),
		writeBacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricWriteBacks,
			Help: "Write-backs of blobs and refs found in a lower tier into an upper one, by stack, upper tier and result (ok, declined, error).",
		}, []string{"stack", "tier", "result"}),
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricFailovers,
			Help: "Stack reads whose source tier failed mid-stream (error, stall, wrong bytes) and that went on from the next source, by stack and failed tier.",
		}, []string{"stack", "tier"}),
		badCopies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricBadCopies,
			Help: "Blobs a tier served with wrong content, by tier; the stack skips such a copy until it is repaired or 10 minutes have passed.",
		}, []string{"tier"}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricRepairs,
			Help: "Bad copies the stack wrote verified bytes over, by tier and result (ok, refused: the tier kept its copy, error).",
		}, []string{"tier", "result"}),
	}
	if reg == nil {
		return m, nil
	}
	var done []prometheus.Collector
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.readBytes, m.writeBytes, m.readErrors, m.collapsed, m.writeBacks, m.failovers, m.badCopies, m.repairs} {
		if err := reg.Register(c); err != nil {
			for _, r := range done { // leave the registry as it was
				reg.Unregister(r)
			}
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("tiers: register metrics: %w (use one Metrics per registry)", err)
			}
			return nil, fmt.Errorf("tiers: register metrics: %w", err)
		}
		done = append(done, c)
	}
	return m, nil
}
