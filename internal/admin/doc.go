// Package admin is the operator's side of a Strata host: list, stat, cat,
// usage, evict, verify, gc, refs, mounts, metrics and warm (the Admin
// interface and its records), the admin endpoint that serves them on
// ROOT/admin.sock, and the Client that asks the process holding a root.
//
// Local implements Admin on the parts of a host this process holds
// (strata.Open builds them, Host.Admin returns it); Serve puts a Local on
// the admin socket; Dial returns a Client that implements Admin by asking
// that process, with the same records and the same errors. blobctl uses
// Local when it opens a root itself and Client when another process holds
// it. Budgets records what a host using a root was configured with, so that
// an inspecting blobctl reports them.
package admin
