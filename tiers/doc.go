// Package tiers composes blob.Tier implementations: the Stack (ordered tiers
// with read-through, write-back, fan-out Put, collapsed misses, Fill from a
// source the caller names, and the Local view without shared tiers) and
// Instrument, the decorator that measures every tier for Prometheus.
//
// The stack is policy-free: who may read what (and from which source) is
// its caller's business.
//
// The tier implementations themselves live in the sub-packages memory, disk
// and reapi; tiertest holds the conformance suite that the stack, the
// instrumenting wrapper and every tier pass.
package tiers
