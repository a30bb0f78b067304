// Package hosttest holds only tests: tests of a whole host (strata.Open, or
// the tier stack and both materializers built as strata.Open builds them)
// that build their layers with materialize/internal/tartest, which Go's
// internal rule keeps out of reach of the module root's own tests. The
// other tests of the host are in the root package.
package hosttest
