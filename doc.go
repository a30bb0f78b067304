// Package strata is the front door of Strata, a library and CLI
// (cmd/blobctl) that gives remote-execution executors their container
// images: fetched once from OCI registries into a content-addressed store of
// tiers (memory over disk over an optional shared Remote Execution API
// cache) and materialized as overlayfs layer directories or ext4 images.
//
// An executor opens one Host at start and closes it at exit:
//
//	cfg := strata.Default() // 256 MiB memory over 10 GiB disk in ~/.cache/strata
//	cfg.Metrics = prometheus.DefaultRegisterer
//	h, err := strata.Open(ctx, cfg)
//	...
//	img, err := h.Fetcher().FetchImage(ctx, ref, cred)
//	lower, err := h.Overlay().Materialize(ctx, img) // or h.Ext4()
//
// # Config
//
// Config is the library's one configuration struct. Its YAML/JSON form is
// flat and its keys are blobctl's flag names ("root", "memory",
// "disk-budget", "remote", "allow-cidr", ...); Default gives the defaults and
// Load reads a file over them (docs/configuration.md lists every key). Sizes
// accept "256MiB", "1GiB" or plain bytes (Size); durations "15m" or "7d"
// (Duration). Metrics and Logger say where the host's metrics and reports
// go; by default nowhere.
//
// # The root
//
// Open holds the disk root: no other process can open it until Close (Open
// fails with an error wrapping ErrLocked). Next to the disk tier's files the
// root holds:
//
//	admin.sock     the admin endpoint (mode 0600, owner and root only)
//	identity.key   32 random bytes keying credential identities, made once
//	               when Config.IdentityKey is empty (mode 0600)
//	budgets.json   the budgets of the host using the root, for blobctl
//	overlay/       the overlay materializer (default Config.OverlayRoot)
//	ext4/          the ext4 materializer (default Config.Ext4Dir)
//
// Hosts that share a REAPI tier must all configure the same IdentityKey, so
// that access proofs and derived images made on one are recognised on the
// others.
//
// # The operator's side
//
// While a Host is open it serves the operator's operations (list, stat,
// cat, usage, evict, verify, gc, refs, mounts, metrics, warm) on
// Root/admin.sock, unless Config.NoAdmin is set; blobctl talks to it when
// the executor holds the root, and opens the root itself otherwise.
// Host.Admin runs the same operations in-process. They live in
// internal/admin.
//
// docs/architecture.md draws the packages and their layers;
// imports_test.go in this package pins those layers: a package that imports
// one above it fails the test.
package strata
