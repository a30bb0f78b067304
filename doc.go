// Package strata is the root of the Strata module: a Go library and CLI
// (cmd/blobctl) that gives remote-execution executors their container
// images, fetched once from OCI registries into a content-addressed store of
// tiers and materialized as overlayfs layer directories or ext4 images.
//
// The executor's front door is, for now, materialize/host (host.Open); see
// docs/architecture.md for the packages and their layers. imports_test.go in
// this package pins those layers: a package that imports one above it fails
// the test.
package strata
