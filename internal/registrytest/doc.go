// Package registrytest is the shared rig for tests that talk to OCI
// registries: ggcr's in-process registry behind httptest (InProcess), the
// real Debian docker-registry binary (StartDistribution) with anonymous,
// htpasswd basic or token auth, a token server for token auth
// (NewTokenServer), a push helper (Push, PushBlob), and a counting reverse
// proxy for fault injection (NewProxy).
//
// Everything listens on 127.0.0.1 only. Clients under test must allow
// loopback explicitly (registry.Config.AllowCIDRs = []string{"127.0.0.0/8"}).
package registrytest
