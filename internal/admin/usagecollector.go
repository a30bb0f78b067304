package admin

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata/blob"
)

// usageTimeout bounds the Usage calls of one scrape.
const usageTimeout = 10 * time.Second

var (
	tierUsageBytesDesc = prometheus.NewDesc("strata_tier_usage_bytes",
		"Bytes of the blobs a local tier holds (logical sizes), by tier.", []string{"tier"}, nil)
	tierUsageBlobsDesc = prometheus.NewDesc("strata_tier_usage_blobs",
		"Blobs a local tier holds, by tier.", []string{"tier"}, nil)
	tierBudgetBytesDesc = prometheus.NewDesc("strata_tier_budget_bytes",
		"A local tier's byte budget, by tier (0: unbounded).", []string{"tier"}, nil)
	ext4ImageBytesDesc = prometheus.NewDesc("strata_ext4_images_bytes",
		"Disk space of the ext4 images kept in the ext4 directory (holes excluded).", nil, nil)
	ext4ImagesDesc = prometheus.NewDesc("strata_ext4_images",
		"ext4 images kept in the ext4 directory.", nil, nil)
)

// usageCollector reports the occupancy of the host's local tiers (memory
// and disk; the shared REAPI tier does not know its own) and of the ext4
// image directory, asked at every scrape. A tier that cannot answer (closed,
// failing) is left out of that scrape.
type usageCollector struct {
	l *Local
}

// UsageCollector returns the collector of the occupancy gauges
// (strata_tier_usage_bytes, strata_tier_usage_blobs, strata_tier_budget_bytes,
// strata_ext4_images_bytes, strata_ext4_images) of l's local tiers and ext4
// directory, asked at every scrape.

func (l *Local) UsageCollector() prometheus.Collector { return usageCollector{l: l} }

func (c usageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{tierUsageBytesDesc, tierUsageBlobsDesc, tierBudgetBytesDesc, ext4ImageBytesDesc, ext4ImagesDesc} {
		ch <- d
	}
}

func (c usageCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), usageTimeout)
	defer cancel()
	var local []blob.Tier
	if c.l.p.Memory != nil {
		local = append(local, c.l.p.Memory)
	}
	if c.l.p.Disk != nil {
		local = append(local, c.l.p.Disk)
	}
	for _, t := range local {
		u, err := t.Usage(ctx)
		if err != nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(tierUsageBytesDesc, prometheus.GaugeValue, float64(u.Bytes), t.Name())
		ch <- prometheus.MustNewConstMetric(tierUsageBlobsDesc, prometheus.GaugeValue, float64(u.Blobs), t.Name())
		ch <- prometheus.MustNewConstMetric(tierBudgetBytesDesc, prometheus.GaugeValue, float64(max(u.Budget, 0)), t.Name())
	}
	if c.l.p.Ext4 != nil {
		if u, err := c.l.p.Ext4.Usage(); err == nil {
			ch <- prometheus.MustNewConstMetric(ext4ImageBytesDesc, prometheus.GaugeValue, float64(u.Bytes))
			ch <- prometheus.MustNewConstMetric(ext4ImagesDesc, prometheus.GaugeValue, float64(u.Images))
		}
	}
}
