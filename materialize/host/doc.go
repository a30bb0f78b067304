// Package host assembles a whole Strata host from one Config: the tier stack
// (memory over disk over an optional shared REAPI tier), the registry client,
// the credential resolver, the fetcher, and the overlay and ext4
// materializers. It is what an executor opens at start and closes at exit,
// and what blobctl opens.
//
// # Config
//
// Config is the library's one configuration struct. Its YAML/JSON form is
// flat and its keys are blobctl's flag names ("root", "memory",
// "disk-budget", "remote", "allow-cidr", ...); Default gives the defaults
// (256 MiB memory over a 10 GiB disk tier in $XDG_CACHE_HOME/strata or
// ~/.cache/strata) and Load reads a file over them. Sizes accept "256MiB",
// "1GiB" or plain bytes (Size); durations "15m" or "7d" (Duration).
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
//	overlay/       the overlay materializer (default Config.Overlay.Root)
//	ext4/          the ext4 materializer (default Config.Ext4.WorkDir)
//
// Hosts that share a REAPI tier must all configure the same IdentityKey, so
// that access proofs made on one are recognised on the others.
//
// # Admin
//
// Admin is what an operator does to a host's tiers: list, stat, cat, usage,
// evict, verify, gc, refs and metrics. *Host implements it directly. While a
// Host is open it serves the same operations over HTTP on Root/admin.sock, and
// Dial returns a *Client that implements Admin by asking that process, with
// the same records and errors; Warm (fetch and read every layer) works
// through it too. blobctl uses Open, and Dial when the root is held by
// another process.
package host
