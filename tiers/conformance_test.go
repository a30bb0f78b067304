package tiers_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/memory"
	"github.com/strata-oci/strata/tiers/tiertest"
)

func newMetrics(t *testing.T) *tiers.Metrics {
	t.Helper()
	m, err := tiers.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestConformanceStack runs the Tier contract against stacks of real tiers.
func TestConformanceStack(t *testing.T) {
	tests := []struct {
		desc string
		cfg  tiertest.Config
	}{
		{"memory over memory", tiertest.Config{
			New: func(t *testing.T) blob.Tier {
				s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{
					{Tier: newMem(t, "top", 0)}, {Tier: newMem(t, "bottom", 0)},
				}})
				t.Cleanup(func() { s.Close() })
				return s
			},
			MaxBlob:          memory.DefaultMaxBlob,
			DeleteRacesReads: true, // a fill may write back a blob deleted meanwhile
		}},
		{"small memory over memory, instrumented", tiertest.Config{
			// The top declines blobs over 64 KiB, so fills and Puts take
			// the decline paths.
			New: func(t *testing.T) blob.Tier {
				s := tiers.NewStack(tiers.StackConfig{
					Tiers:   []tiers.Entry{{Tier: newMem(t, "top", 64<<10)}, {Tier: newMem(t, "bottom", 0)}},
					Metrics: newMetrics(t),
				})
				t.Cleanup(func() { s.Close() })
				return s
			},
			MaxBlob:          memory.DefaultMaxBlob,
			DeleteRacesReads: true, // a fill may write back a blob deleted meanwhile
		}},
		{"local view of memory over a shared memory", tiertest.Config{
			New: func(t *testing.T) blob.Tier {
				// Close of a view closes nothing, so the suite's Close
				// subtest runs against the root through closer.
				s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{
					{Tier: newMem(t, "local", 0)}, {Tier: newMem(t, "shared", 0), Shared: true},
				}})
				t.Cleanup(func() { s.Close() })
				return &closer{Stack: s.Local(), root: s}
			},
			MaxBlob:          memory.DefaultMaxBlob,
			DeleteRacesReads: true, // a fill may write back a blob deleted meanwhile
		}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) { tiertest.Run(t, tt.cfg) })
	}
}

// closer is a view whose Close closes the root stack.
type closer struct {
	*tiers.Stack
	root *tiers.Stack
}

func (c *closer) Close() error { return c.root.Close() }

// TestConformanceInstrument runs the Tier contract against the
// instrumenting wrapper.
func TestConformanceInstrument(t *testing.T) {
	tiertest.Run(t, tiertest.Config{
		New: func(t *testing.T) blob.Tier {
			return tiers.Instrument(newMem(t, "memory", 0), newMetrics(t))
		},
		MaxBlob: memory.DefaultMaxBlob,
	})
}
