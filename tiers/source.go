package tiers

import (
	"context"
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/strata-oci/strata/blob"
)

// WithSource returns a view of s with src below all of its tiers: a
// read-only origin, such as a registry read with one caller's credentials,
// that Stat and Open fall back to when no tier holds a blob. A blob read from
// src is verified and written into the view's tiers while it streams to the
// caller, exactly like a hit in a lower tier, so an origin is never read
// twice for one fill.
//
// Fills collapse only among source views with the same key over the same
// tiers: key names the source (for a registry, host and repository), so a
// caller never waits for, or inherits the failure of, a fill that another
// caller's source leads (a registry that stalls or lies). The caller must
// have established its own right to the blob before opening it (the
// fetcher authorizes every caller first). A Local view with a source never
// joins a fill of the full stack.
//
// src is never written: Put, Delete and the ref operations of the view act on
// its tiers only (src answers them as unavailable or unsupported, which the
// stack skips), and Walk does not list it.
func (s *Stack) WithSource(src blob.Tier, key string) *Stack {
	e := &stackEntry{
		Entry: Entry{Tier: Instrument(readOnly{src}, s.root.metrics)},
		idx:   -1, // below every tier
		name:  src.Name(),
	}
	e.declines.Store(math.MaxInt64)
	v := s.root.view(append(slices.Clone(s.ents), e))
	v.key += "|source=" + key
	return v
}

// WithOrigin returns a view of s whose reads come from src only, never from
// its tiers: an origin that must show it holds a blob before a caller may
// have it (a registry repository that has not yet served the blob to this
// host). Open reads src and streams the blob to the caller while writing it
// into every tier of the view (a tier that holds it already is skipped), so
// the bytes are verified and cached as with WithSource. Stat asks src only.
//
// Fills collapse only among origin views with the same key and the same
// tiers: key names the origin (for a registry, host and repository), so a
// caller never receives bytes that another origin served. Writes behave as
// in WithSource.
//
// proven, if not nil, is asked inside the fill (where fills of one key and
// digest run one at a time) whether the tiers may serve d after all, say
// because an earlier fill from this origin has just proven it: then the
// fill reads the tiers top-down like any other, and the origin is not
// asked again. filled, if not nil, is called by a fill that read d from
// src completely and verified, after the tiers committed it and before the
// fill's waiters go on: the moment to record that the origin holds d.
func (s *Stack) WithOrigin(src blob.Tier, key string, proven func(context.Context, blob.Digest) bool, filled func(context.Context, blob.Digest)) *Stack {
	v := s.WithSource(src, key)
	v.origin = true
	v.proven, v.filled = proven, filled
	v.key += "|origin=" + key
	return v
}

// readOnly exposes only the reads of a source tier.
type readOnly struct{ src blob.Tier }

func (r readOnly) Name() string { return r.src.Name() }

func (r readOnly) Stat(ctx context.Context, d blob.Digest) (blob.Info, error) {
	return r.src.Stat(ctx, d)
}

func (r readOnly) Open(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	return r.src.Open(ctx, d)
}

func (r readOnly) refused(op string) error {
	return fmt.Errorf("source %q: %s: %w: a source is read-only", r.src.Name(), op, blob.ErrUnavailable)
}

func (r readOnly) unsupported(op string) error {
	return fmt.Errorf("source %q: %s: %w", r.src.Name(), op, blob.ErrUnsupported)
}

func (r readOnly) Put(context.Context, blob.Digest, int64, io.Reader) error {
	return r.refused("put")
}

func (r readOnly) Delete(context.Context, blob.Digest) error { return r.unsupported("delete") }

func (r readOnly) Walk(context.Context, func(blob.Info) error) error { return r.unsupported("walk") }

func (r readOnly) GetRef(_ context.Context, k blob.RefKey) (blob.Ref, error) {
	return blob.Ref{}, fmt.Errorf("source %q: get ref %s: %w", r.src.Name(), k, blob.ErrNotFound)
}

func (r readOnly) PutRef(context.Context, blob.RefKey, blob.Ref) error { return r.refused("put ref") }

func (r readOnly) DeleteRef(context.Context, blob.RefKey) error { return r.unsupported("delete ref") }

func (r readOnly) WalkRefs(context.Context, string, func(blob.RefKey, blob.Ref) error) error {
	return r.unsupported("walk refs")
}

func (r readOnly) Usage(context.Context) (blob.Usage, error) {
	return blob.Usage{}, r.unsupported("usage")
}

// Close does not close the source: the view does not own it.
func (r readOnly) Close() error { return nil }
