package admin

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/units"
)

// ErrInvalidRequest is wrapped by admin errors about the request itself
// (an unknown tier, conflicting evict selectors).
var ErrInvalidRequest = errors.New("invalid request")

// Admin is what an operator can do to a host's tiers. *Local implements it
// in the process that holds the root; the *Client that Dial returns
// implements it by asking that process over its admin socket. Both give the same records and
// the same errors (wrapping the same sentinels), so a tool written against
// Admin behaves alike whether or not the root is in use.
//
// Tier names select one tier of the stack; "" means every tier the operation
// applies to. Methods are safe for concurrent use.
type Admin interface {
	// Blobs lists the blobs of every tier that can list (the remote tier
	// cannot), with media types where a cached manifest or ref names them.
	Blobs(ctx context.Context, tier string) ([]BlobRecord, error)
	// Refs lists unexpired refs (all namespaces when namespace is "").
	Refs(ctx context.Context, tier, namespace string) ([]RefRecord, error)
	// Stat reports each tier holding d; an error wrapping blob.ErrNotFound
	// when none does.
	Stat(ctx context.Context, d blob.Digest) ([]BlobRecord, error)
	// Cat writes the blob's bytes to w, verified against d: on a mismatch
	// it fails with a *blob.MismatchError after writing what it read.
	Cat(ctx context.Context, d blob.Digest, w io.Writer) (int64, error)
	// Usage reports each tier's occupancy against its budget, the overlay
	// materializer's layer directories as the pseudo-tier "overlay", the
	// ext4 images handed out as "ext4", and as "root" every byte under the
	// disk root (and under the overlay root and ext4 directory when they
	// lie outside it): blobs, layers, images, the index, temporary files.
	Usage(ctx context.Context) ([]UsageRecord, error)
	// Evict removes blobs (see EvictRequest) and reports what each tier freed.
	Evict(ctx context.Context, req EvictRequest) ([]EvictRecord, error)
	// Verify re-hashes every blob of the local tiers (or of req.Tier) and
	// reports each; with req.Remove, corrupt entries are dropped. With
	// req.Overlay it also re-checks the extracted overlay layers and drops
	// modified ones (see VerifyRequest.Overlay). Blobs the
	// disk tier found missing when it was opened (their row was forgotten)
	// are reported as missing by the first Verify after the open.
	Verify(ctx context.Context, req VerifyRequest) ([]VerifyRecord, error)
	// GC drops mount leases whose mount is gone, then removes expired refs,
	// refs whose blob no tier holds, extracted overlay layers no lease
	// (mount leases included) holds, unreferenced ext4 images and those
	// beyond the ext4 budget, and what killed ext4 conversions left in
	// ext4-dir/tmp (see ext4.Converter.RemoveStale).
	GC(ctx context.Context) (GCResult, error)
	// Mounts lists the mount leases: overlays mounted by materialize
	// --mount, whose layers stay until ReleaseMount.
	Mounts(ctx context.Context) ([]MountRecord, error)
	// ReleaseMount ends the mount lease of dir, which the caller has
	// unmounted. It fails with an error wrapping blob.ErrNotFound when no
	// lease names dir, and with one wrapping ErrInvalidRequest while an
	// overlay is still mounted there.
	ReleaseMount(ctx context.Context, dir string) (MountRecord, error)
	// Metrics writes the Prometheus text exposition of the host's registry.
	Metrics(ctx context.Context, w io.Writer) error
	// Close releases what the Admin holds (for a Local: the whole host).
	Close() error
}

// BlobRecord is one blob held by one tier.
type BlobRecord struct {
	Tier       string    `json:"tier"`
	Digest     string    `json:"digest"`
	Size       int64     `json:"size"`
	LastAccess time.Time `json:"last_access,omitzero"`
	MediaType  string    `json:"media_type,omitempty"`
}

// RefRecord is one ref held by one tier.
type RefRecord struct {
	Tier      string    `json:"tier"`
	Namespace string    `json:"namespace"`
	Scope     string    `json:"scope,omitempty"`
	Name      string    `json:"name"`
	Digest    string    `json:"digest"`
	Size      int64     `json:"size"`
	MediaType string    `json:"media_type,omitempty"`
	Expires   time.Time `json:"expires,omitzero"`
}

// UsageRecord is one tier's occupancy.
type UsageRecord struct {
	Tier   string `json:"tier"`
	Shared bool   `json:"shared,omitempty"`
	Blobs  int64  `json:"blobs"`
	Bytes  int64  `json:"bytes"`
	Refs   int64  `json:"refs"`
	Budget int64  `json:"budget"`
	// Error says why the tier could not report (a remote tier cannot).
	Error string `json:"error,omitempty"`
}

// EvictRequest selects what Evict removes. Exactly one of Digest, Image,
// OlderThan and ToSize must be set (ToSize 0 is valid with ToSizeSet).
type EvictRequest struct {
	// Digest removes one blob from Tier (every tier holding it when empty).
	Digest string `json:"digest,omitempty"`
	// Image forgets an image: its tag, membership and proofs in every tier,
	// and its blobs from the local tiers unless another cached image uses
	// them (fetcher.InvalidateCache). Tier must be empty.
	Image string `json:"image,omitempty"`
	// OlderThan removes blobs last accessed more than this long ago.
	OlderThan units.Duration `json:"older_than,omitempty"`
	// ToSize evicts least recently used blobs until each selected tier
	// holds at most this many bytes.
	ToSize    units.Size `json:"to_size,omitempty"`
	ToSizeSet bool       `json:"to_size_set,omitempty"`
	// Tier restricts eviction to one tier; empty means every local tier.
	Tier string `json:"tier,omitempty"`
}

// EvictRecord is what one tier freed.
type EvictRecord struct {
	Tier  string `json:"tier"`
	Blobs int    `json:"blobs"`
	Bytes int64  `json:"bytes"`
}

// VerifyRequest selects what Verify checks.
type VerifyRequest struct {
	// Tier restricts verification to one local tier.
	Tier string `json:"tier,omitempty"`
	// Remove drops corrupt and missing entries (and, with Overlay,
	// unverifiable layers).
	Remove bool `json:"remove,omitempty"`
	// Overlay also re-checks every extracted overlay layer against the
	// manifest written when it was extracted (overlay.Materializer.Verify),
	// reported as tier "overlay": a modified layer (a file changed, added
	// or removed) is "corrupt" and dropped unless a lease holds it, a layer
	// without a manifest "unverifiable".
	Overlay bool `json:"overlay,omitempty"`
}

// Verify statuses.
const (
	StatusOK      = "ok"
	StatusCorrupt = "corrupt"
	StatusMissing = "missing"
	StatusError   = "error"
	// StatusUnverifiable: an overlay layer without a manifest (extracted
	// before manifests were written); it cannot be checked.
	StatusUnverifiable = "unverifiable"
)

// VerifyRecord is the result for one blob.
type VerifyRecord struct {
	Tier    string `json:"tier"`
	Digest  string `json:"digest"`
	Size    int64  `json:"size"`
	Status  string `json:"status"`
	Error   string `json:"error,omitempty"`
	Removed bool   `json:"removed,omitempty"`
}

// MountRecord is one mount lease (see overlay.MountLease).
type MountRecord struct {
	Target  string    `json:"target"`
	Image   string    `json:"image,omitempty"`
	Layers  []string  `json:"layers"`
	Created time.Time `json:"created,omitzero"`
}

// GCResult reports what GC removed.
type GCResult struct {
	// StaleMounts counts mount leases dropped because their mount was gone;
	// Mounts counts those that remain (their layers are kept).
	StaleMounts  int   `json:"stale_mounts"`
	Mounts       int   `json:"mounts"`
	ExpiredRefs  int   `json:"expired_refs"`
	OrphanRefs   int   `json:"orphan_refs"`
	Layers       int   `json:"layers"`
	LayerBytes   int64 `json:"layer_bytes"`
	LayersLeased int   `json:"layers_leased"`
	// Ext4Images counts the ext4 images removed from ext4-dir (those
	// whose derivation ref is gone, then the least recently used beyond
	// the ext4 budget); Ext4Bytes is their size.
	Ext4Images int   `json:"ext4_images"`
	Ext4Bytes  int64 `json:"ext4_bytes"`
	// Ext4TempFiles counts the leftovers of killed conversions removed
	// from ext4-dir/tmp (ext4.Converter.RemoveStale), Ext4TempBytes the
	// disk space they took.
	Ext4TempFiles int   `json:"ext4_temp_files"`
	Ext4TempBytes int64 `json:"ext4_temp_bytes"`
}

var (
	_ Admin = (*Local)(nil)
	_ Admin = (*Client)(nil)
)
