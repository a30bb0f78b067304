package disk

import (
	"os"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers/tiertest"
)

// TestConformance runs the suite on a tier with a budget (so the eviction
// machinery is live throughout; no case comes near it) and a per-blob limit
// that admits the suite's 64 MiB blob and nothing bigger.
func TestConformance(t *testing.T) {
	cfg := func(root string) Config {
		return Config{Root: root, Budget: 1 << 30, MaxBlob: tiertest.LargeBlobSize, FlushThreshold: 16}
	}
	tiertest.Run(t, tiertest.Config{
		New:     func(t *testing.T) blob.Tier { return openTier(t, cfg("")) },
		MaxBlob: tiertest.LargeBlobSize,
		Corrupt: func(t *testing.T, tier blob.Tier, d blob.Digest) {
			f, err := os.OpenFile(tier.(*Tier).path(d.Encoded()), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			b := make([]byte, 1)
			if _, err := f.ReadAt(b, 7); err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte{b[0] ^ 0x80}, 7); err != nil {
				t.Fatal(err)
			}
		},
		Reopen: func(t *testing.T, old blob.Tier) blob.Tier {
			root := old.(*Tier).Root()
			if err := old.Close(); err != nil {
				t.Fatalf("Close before reopen: %v", err)
			}
			tr := openTier(t, cfg(root))
			if rs := tr.Reconciled(); rs != (ReconcileStats{}) {
				t.Errorf("reopen after a clean Close repaired %+v", rs)
			}
			return tr
		},
	})
}
