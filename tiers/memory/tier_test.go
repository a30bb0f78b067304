package memory_test

import (
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers/memory"
	"github.com/strata-oci/strata/tiers/tiertest"
)

func newTier(t *testing.T, cfg memory.Config) *memory.Tier {
	tier := memory.New(cfg)
	t.Cleanup(func() { tier.Close() })
	return tier
}

// TestConformance runs the Tier contract against the default configuration,
// whose per-blob limit (64 MiB) admits the suite's largest blob.
func TestConformance(t *testing.T) {
	tiertest.Run(t, tiertest.Config{
		New:     func(t *testing.T) blob.Tier { return newTier(t, memory.Config{}) },
		MaxBlob: memory.DefaultMaxBlob,
	})
}

// TestConformanceSmallBlobLimit runs the contract with a 1 MiB per-blob
// limit, so the suite exercises ErrTooLarge and shrinks its other cases.
func TestConformanceSmallBlobLimit(t *testing.T) {
	tiertest.Run(t, tiertest.Config{
		New: func(t *testing.T) blob.Tier {
			return newTier(t, memory.Config{Name: "memory-small", MaxBlob: 1 << 20})
		},
		MaxBlob: 1 << 20,
	})
}
