package admin_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata"
)

// testConfig is the default configuration over a fresh root, with loopback
// registries allowed.
func testConfig(t *testing.T) strata.Config {
	cfg := strata.Default()
	cfg.Root = t.TempDir()
	cfg.AllowCIDRs = []string{"127.0.0.0/8"}
	return cfg
}

// withMetrics returns cfg with its metrics on reg.
func withMetrics(cfg strata.Config, reg prometheus.Registerer) strata.Config {
	cfg.Metrics = reg
	return cfg
}
