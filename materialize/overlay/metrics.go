package overlay

import "github.com/prometheus/client_golang/prometheus"

// metrics are the materializer's Prometheus collectors. They are registered
// on Config.Metrics when it is set and work unregistered otherwise.
type metrics struct {
	extractBytes   prometheus.Counter
	extractFiles   prometheus.Counter
	extractSeconds prometheus.Histogram
	extractions    *prometheus.CounterVec // result: ok, error, corrupt, changed
	layerHits      prometheus.Counter
	collapsed      prometheus.Counter
	refused        prometheus.Counter
	evictions      prometheus.Counter
	cachedBytes    prometheus.Gauge
	cachedLayers   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		extractBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "strata", Subsystem: "overlay", Name: "extract_bytes_total",
			Help: "Bytes of regular-file content written while extracting layers.",
		}),
		extractFiles: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "strata", Subsystem: "overlay", Name: "extract_files_total",
			Help: "Regular files written while extracting layers.",
		}),
		extractSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "strata", Subsystem: "overlay", Name: "extract_seconds",
			Help:    "Time to extract one layer into its directory.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14),
		}),
		extractions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "strata", Subsystem: "overlay", Name: "layer_extractions_total",
			Help: "Layer extractions, by result (ok; error; corrupt: the bytes read were wrong, read again; changed: the layer changed before its manifest was written and was taken out of service).",
		}, []string{"result"}),
		layerHits: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "strata", Subsystem: "overlay", Name: "layer_cache_hits_total",
			Help: "Layers requested that were already extracted.",
		}),
		collapsed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "strata", Subsystem: "overlay", Name: "singleflight_collapsed_total",
			Help: "Layer requests that joined an extraction already in flight.",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "strata", Subsystem: "overlay", Name: "reuse_refused_total",
			Help: "Extracted layers not handed to a caller that could not prove it may have the layer's blob.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "strata", Subsystem: "overlay", Name: "evictions_total",
			Help: "Layer directories removed to stay under the byte budget or by Cleanup.",
		}),
		cachedBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "strata", Subsystem: "overlay", Name: "cached_bytes",
			Help: "Bytes of file content held in extracted layer directories.",
		}),
		cachedLayers: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "strata", Subsystem: "overlay", Name: "cached_layers",
			Help: "Extracted layer directories.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.extractBytes, m.extractFiles, m.extractSeconds, m.extractions,
			m.layerHits, m.collapsed, m.refused, m.evictions, m.cachedBytes, m.cachedLayers} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
