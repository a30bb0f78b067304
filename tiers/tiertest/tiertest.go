// Package tiertest is the conformance suite for blob.Tier: one set of tests
// that holds the whole Tier contract. Every tier and every wrapper runs it:
//
//	func TestConformance(t *testing.T) {
//		tiertest.Run(t, tiertest.Config{New: func(t *testing.T) blob.Tier { ... }})
//	}
package tiertest

import (
	"testing"

	"github.com/strata-oci/strata/blob"
)

// Config describes the tier under test.
type Config struct {
	// New returns a fresh, empty tier; it registers its own cleanup with
	// t.Cleanup. The suite closes nothing it did not open.
	New func(t *testing.T) blob.Tier
	// CannotList: Walk and WalkRefs return blob.ErrUnsupported.
	CannotList bool
	// CannotDelete: Delete and DeleteRef return blob.ErrUnsupported.
	CannotDelete bool
}

// Run runs the conformance suite against cfg.New.
func Run(t *testing.T, cfg Config) {
	t.Helper()
	t.Skip("conformance suite not written yet")
}
