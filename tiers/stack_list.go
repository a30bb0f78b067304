package tiers

import (
	"context"
	"errors"
	"fmt"

	"github.com/strata-oci/strata/blob"
)

// Walk calls fn once per blob held by any tier of the view, top tier first;
// a blob held by several tiers is reported once, with the Info of the
// highest. Tiers that cannot list or are unavailable are skipped
// (blob.ErrUnsupported if every tier cannot list). fn's error stops the
// walk and is returned as is.
func (s *Stack) Walk(ctx context.Context, fn func(blob.Info) error) error {
	if err := s.check(ctx, "walk"); err != nil {
		return err
	}
	seen := make(map[blob.Digest]struct{})
	return s.walkAll(ctx, "walk", func(e *stackEntry, stopped *error) error {
		return e.Tier.Walk(ctx, func(info blob.Info) error {
			if _, ok := seen[info.Digest]; ok {
				return nil
			}
			seen[info.Digest] = struct{}{}
			if err := fn(served(info, e)); err != nil {
				*stopped = err
				return err
			}
			return nil
		})
	})
}

// WalkRefs calls fn once per unexpired ref in namespace (all namespaces when
// empty) held by any tier of the view, with the highest tier's record when
// several hold it. Skips and errors as Walk.
func (s *Stack) WalkRefs(ctx context.Context, namespace string, fn func(blob.RefKey, blob.Ref) error) error {
	if err := s.check(ctx, "walk refs"); err != nil {
		return err
	}
	seen := make(map[blob.RefKey]struct{})
	return s.walkAll(ctx, "walk refs", func(e *stackEntry, stopped *error) error {
		return e.Tier.WalkRefs(ctx, namespace, func(k blob.RefKey, r blob.Ref) error {
			if _, ok := seen[k]; ok {
				return nil
			}
			seen[k] = struct{}{}
			if err := fn(k, r); err != nil {
				*stopped = err
				return err
			}
			return nil
		})
	})
}

func (s *Stack) walkAll(ctx context.Context, op string, walk func(e *stackEntry, stopped *error) error) error {
	listed := len(s.ents) == 0
	for _, e := range s.ents {
		var stopped error
		err := walk(e, &stopped)
		switch {
		case stopped != nil:
			return stopped
		case err == nil:
			listed = true
		case ctx.Err() != nil:
			return s.stop(ctx, op, "", err)
		case errors.Is(err, blob.ErrUnsupported), errors.Is(err, blob.ErrUnavailable):
		default:
			return fmt.Errorf("stack %q: %s: %w", s.root.name, op, err)
		}
	}
	if !listed {
		return fmt.Errorf("stack %q: %s: %w by every tier", s.root.name, op, blob.ErrUnsupported)
	}
	return nil
}

// TierUsage is one tier's occupancy as reported by Stack.TierUsage.
type TierUsage struct {
	Name   string
	Shared bool
	Usage  blob.Usage
	Err    error // the tier's error; Usage is zero then
}

// TierUsage reports each tier of the view's occupancy, top to bottom.
func (s *Stack) TierUsage(ctx context.Context) ([]TierUsage, error) {
	if err := s.check(ctx, "usage"); err != nil {
		return nil, err
	}
	out := make([]TierUsage, len(s.ents))
	for i, e := range s.ents {
		u, err := e.Tier.Usage(ctx)
		if err != nil && ctx.Err() != nil {
			return nil, s.stop(ctx, "usage", "", err)
		}
		out[i] = TierUsage{Name: e.name, Shared: e.Shared, Usage: u, Err: err}
		if err != nil {
			out[i].Usage = blob.Usage{}
		}
	}
	return out, nil
}

// Usage sums the occupancy of the view's tiers that report it (a blob held
// by two tiers counts twice: this is what the tiers hold, not what is
// distinct). Budget is the sum of the budgets. It fails with the first
// error only if no tier reports usage; per-tier figures come from
// TierUsage.
func (s *Stack) Usage(ctx context.Context) (blob.Usage, error) {
	per, err := s.TierUsage(ctx)
	if err != nil {
		return blob.Usage{}, err
	}
	var (
		sum      blob.Usage
		answered bool
		firstErr error
	)
	for _, t := range per {
		if t.Err != nil {
			if firstErr == nil {
				firstErr = t.Err
			}
			continue
		}
		answered = true
		sum.Blobs += t.Usage.Blobs
		sum.Bytes += t.Usage.Bytes
		sum.Refs += t.Usage.Refs
		sum.Budget += t.Usage.Budget
	}
	if !answered && firstErr != nil {
		return blob.Usage{}, fmt.Errorf("stack %q: usage: %w", s.root.name, firstErr)
	}
	return sum, nil
}

// Close closes every tier of the root stack, top to bottom, and makes later
// calls on the stack and all its views fail with blob.ErrUnavailable. Close
// on a view (from Local) closes nothing and returns nil: the
// root owns the tiers. Closing twice returns nil. Repairs of bad copies
// still running in the background are cancelled and waited for first.
func (s *Stack) Close() error {
	if s.isView() || !s.root.closed.CompareAndSwap(false, true) {
		return nil
	}
	s.root.repairMu.Lock()
	s.root.repairsClosed = true
	close(s.root.repairStop)
	s.root.repairMu.Unlock()
	s.root.repairs.Wait()
	var errs []error
	for _, e := range s.root.all {
		if err := e.Tier.Close(); err != nil {
			errs = append(errs, fmt.Errorf("stack %q: close tier %q: %w", s.root.name, e.name, err))
		}
	}
	return errors.Join(errs...)
}
