package admin

import (
	"fmt"
	"io"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/materialize/ext4"
	"github.com/strata-oci/strata/materialize/overlay"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/disk"
	"github.com/strata-oci/strata/tiers/memory"
)

// Names of a host's tiers, as they appear in blob.Info.Tier, metrics and
// blobctl's --tier flag.
const (
	TierMemory = "memory"
	TierDisk   = "disk"
	TierRemote = "remote"
)

// SocketName is the admin endpoint's file under the disk root.
const SocketName = "admin.sock"

// Parts are the pieces of an opened host that the operations act on. The
// composition root (strata.Open) builds and owns them; Local.Close only
// closes Closer.
type Parts struct {
	Stack   *tiers.Stack
	Memory  *memory.Tier // nil when the memory tier is off
	Disk    *disk.Tier
	Fetcher *fetcher.Fetcher
	Overlay *overlay.Materializer
	Ext4    *ext4.Converter
	// Root is the disk root; OverlayRoot and Ext4Dir the materializers'
	// directories (Usage counts every byte under the three).
	Root, OverlayRoot, Ext4Dir string
	// OverlayBudget is reported by Usage (the overlay materializer
	// applies it).
	OverlayBudget int64
	// Gatherer serves Metrics; nil: Metrics fails with blob.ErrUnsupported.
	Gatherer prometheus.Gatherer
	// Closer is closed by Local.Close (the whole host); nil: nothing.
	Closer io.Closer
}

// Local is the Admin of a host this process holds: every operation runs
// in-process on the host's parts. It is what the admin endpoint serves
// (Serve) and what blobctl uses when it opens a root itself. It is safe
// for concurrent use.
type Local struct {
	p             Parts
	forgottenOnce sync.Once // see takeForgotten
}

// New returns the Local of p.
func New(p Parts) *Local { return &Local{p: p} }

// Root returns the disk root.
func (l *Local) Root() string { return l.p.Root }

// Close closes Parts.Closer (the whole host), if any.
func (l *Local) Close() error {
	if l.p.Closer == nil {
		return nil
	}
	return l.p.Closer.Close()
}

// tierByName returns the stack's tier of that name.
func (l *Local) tierByName(name string) (tiers.Entry, error) {
	for _, e := range l.p.Stack.Tiers() {
		if e.Tier.Name() == name {
			return e, nil
		}
	}
	return tiers.Entry{}, fmt.Errorf("%w: no tier %q (have %s)", ErrInvalidRequest, name, l.tierNames())
}

func (l *Local) tierNames() string {
	s := ""
	for i, e := range l.p.Stack.Tiers() {
		if i > 0 {
			s += ", "
		}
		s += e.Tier.Name()
	}
	return s
}

var _ blob.Tier = (*tiers.Stack)(nil)
