package disk

import (
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers/tiertest"
)

func TestConformance(t *testing.T) {
	tiertest.Run(t, tiertest.Config{
		New: func(t *testing.T) blob.Tier { return openTier(t, Config{}) },
		Reopen: func(t *testing.T, old blob.Tier) blob.Tier {
			root := old.(*Tier).Root()
			if err := old.Close(); err != nil {
				t.Fatalf("Close before reopen: %v", err)
			}
			tr := openTier(t, Config{Root: root})
			if rs := tr.Reconciled(); rs != (ReconcileStats{}) {
				t.Errorf("reopen after a clean Close repaired %+v", rs)
			}
			return tr
		},
	})
}
