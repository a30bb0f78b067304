package tiers

import (
	"context"
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"github.com/strata-oci/strata/blob"
)

// Source reads one blob from outside the stack: a registry, read with one
// caller's credentials, say. The stack verifies whatever it yields.
type Source interface {
	// Name names the source in errors and metrics, and in the blob.Info
	// of the bytes it serves.
	Name() string
	// Open returns a reader over the blob from its first byte. Its errors
	// are the stack's answer when no tier serves the blob.
	Open(ctx context.Context) (io.ReadCloser, error)
}

// Fill reads d, of size bytes, from src and streams it to the caller while
// writing it into every tier of the view (a tier that already holds d
// returns from its Put at once; one whose copy of d is marked bad is
// repaired). It never reads d from the tiers for the caller: the bytes the
// caller gets are src's, verified against d and size as they stream. Each
// tier verifies and commits on its own, all or nothing; the returned reader
// reports io.EOF only after exactly d was delivered and the tiers took it,
// and Info.Tier is src.Name().
//
// Concurrent Fills of d with the same key through the same view collapse
// into one read of the source (the first caller's src), as misses of Open
// do (see Stack). Fills with different keys never share anything: one key's
// source that stalls or fails neither holds up nor fails another key's
// caller, and a caller never gets bytes before its own key's source was
// read. A caller that joined a fill reads d, once that fill has read its
// source to the verified end, from the tiers it filled (else from its own
// src); a fill that failed or did not read its source to the end is not
// its answer: it tries again.
//
// key names the source for collapsing (for a registry: host and
// repository); sources of one key must serve the same blobs.
func (s *Stack) Fill(ctx context.Context, key string, d blob.Digest, size int64, src Source) (io.ReadCloser, blob.Info, error) {
	v, err := s.withSource("fill", key, size, src, true)
	if err != nil {
		return nil, blob.Info{}, err
	}
	return v.Open(ctx, d)
}

// OpenOrFill is Open with src below the view's tiers: where no tier serves
// d (a miss, or every tier holding it failing, before the first byte or
// mid-stream), the read goes on from src, and bytes read from src are
// written into the tiers above like a hit below. Collapsing is per key, as
// in Fill: a caller never waits for a read that another key's source
// serves.
func (s *Stack) OpenOrFill(ctx context.Context, key string, d blob.Digest, size int64, src Source) (io.ReadCloser, blob.Info, error) {
	v, err := s.withSource("open", key, size, src, false)
	if err != nil {
		return nil, blob.Info{}, err
	}
	return v.Open(ctx, d)
}

// withSource returns the view of s with src below its tiers, for one call;
// only: reads come from src alone (see Fill).
func (s *Stack) withSource(op, key string, size int64, src Source, only bool) (*Stack, error) {
	if size < 0 {
		return nil, fmt.Errorf("stack %q: %s: %w: negative size %d", s.root.name, op, blob.ErrInvalidDigest, size)
	}
	if src == nil {
		return nil, fmt.Errorf("stack %q: %s: no source", s.root.name, op)
	}
	e := &stackEntry{
		idx:     -1, // below every tier
		name:    src.Name(),
		src:     src,
		srcSize: size,
		meter:   s.root.sourceMeter(src.Name()),
	}
	e.declines.Store(math.MaxInt64)
	v := s.root.view(append(slices.Clone(s.ents), e))
	v.sourceOnly = only
	if only {
		v.key += "|fill=" + key
	} else {
		v.key += "|source=" + key
	}
	return v, nil
}

// sourceMeter returns the instrumentation of the sources named name (nil
// without metrics).
func (r *stackRoot) sourceMeter(name string) *instrumented {
	if r.metrics == nil {
		return nil
	}
	if it, ok := r.meters.Load(name); ok {
		return it.(*instrumented)
	}
	it, _ := r.meters.LoadOrStore(name, newInstrumented(nil, name, r.metrics))
	return it.(*instrumented)
}

// open opens d from the entry: its tier, or its source.
func (e *stackEntry) open(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	if e.src == nil {
		return e.Tier.Open(ctx, d)
	}
	start := time.Now()
	rc, err := e.src.Open(ctx)
	if e.meter != nil {
		e.meter.done(opOpen, start, err, true)
	}
	if err != nil {
		return nil, blob.Info{}, err
	}
	if e.meter != nil {
		rc = &countingReader{rc: rc, it: e.meter}
	}
	return rc, blob.Info{Digest: d, Size: e.srcSize, Tier: e.name}, nil
}
