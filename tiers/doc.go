// Package tiers composes blob.Tier implementations: the Stack (ordered tiers
// with read-through, write-back, collapsed misses and per-request exclusion)
// and Instrument, the decorator that measures every tier for Prometheus.
//
// The tier implementations themselves live in the sub-packages memory, disk
// and reapi; tiertest holds the conformance suite that the stack, the
// instrumenting wrapper and every tier pass.
package tiers
