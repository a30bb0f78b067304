package tiers

import (
	"context"
	"errors"
	"fmt"

	"github.com/strata-oci/strata/blob"
)

// GetRef returns the ref from the highest tier holding it (unexpired) and
// writes it back into the tiers above that missed it; a failed write-back
// is counted, not returned. Unavailable or failing tiers are skipped.
func (s *Stack) GetRef(ctx context.Context, k blob.RefKey) (blob.Ref, error) {
	if err := s.check(ctx, "get ref"); err != nil {
		return blob.Ref{}, err
	}
	if err := k.Validate(); err != nil {
		return blob.Ref{}, fmt.Errorf("stack %q: get ref: %w", s.root.name, err)
	}
	var (
		m      misses
		uppers []*stackEntry
	)
	for _, e := range s.ents {
		r, err := e.Tier.GetRef(ctx, k)
		if err == nil {
			for _, u := range uppers {
				u.countWriteBack(u.Tier.PutRef(ctx, k, r))
			}
			return r, nil
		}
		if !m.note(ctx, e, err) {
			return blob.Ref{}, s.stop(ctx, "get ref", k.String(), err)
		}
		if errors.Is(err, blob.ErrNotFound) {
			uppers = append(uppers, e)
		}
	}
	return blob.Ref{}, m.err(s.root.name, "get ref", k.String())
}

// PutRef creates or replaces the ref in every tier of the view. Like Put, it
// succeeds if at least one tier stored it (the others' failures are counted
// in the metrics); otherwise it returns the first error, preferring real
// failures over unavailability and declines.
func (s *Stack) PutRef(ctx context.Context, k blob.RefKey, r blob.Ref) error {
	if err := s.check(ctx, "put ref"); err != nil {
		return err
	}
	if err := k.Validate(); err != nil {
		return fmt.Errorf("stack %q: put ref: %w", s.root.name, err)
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("stack %q: put ref %s: %w", s.root.name, k, err)
	}
	if len(s.ents) == 0 {
		return fmt.Errorf("stack %q: put ref %s: %w: the view has no tiers", s.root.name, k, blob.ErrUnavailable)
	}
	var firstErr, weak error
	stored := false
	errs := make([]error, len(s.ents))
	for i, e := range s.ents {
		err := e.Tier.PutRef(ctx, k, r)
		errs[i] = err
		switch {
		case err == nil:
			stored = true
		case ctx.Err() != nil:
			return s.stop(ctx, "put ref", k.String(), err)
		case errors.Is(err, blob.ErrUnavailable), errors.Is(err, blob.ErrTooLarge), errors.Is(err, blob.ErrUnsupported):
			if weak == nil {
				weak = err
			}
		default:
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	switch {
	case stored:
		s.logPartial("put ref", s.ents, errs)
		return nil
	case firstErr != nil:
		return fmt.Errorf("stack %q: %w", s.root.name, firstErr)
	default:
		return fmt.Errorf("stack %q: %w", s.root.name, weak)
	}
}

// DeleteRef removes the ref from every tier of the view, bottom-up. Every
// tier failure, unavailability included, is returned (joined): a ref that
// may have survived somewhere (a revoked record, say) is not
// reported deleted. blob.ErrNotFound only if no tier held it.
func (s *Stack) DeleteRef(ctx context.Context, k blob.RefKey) error {
	if err := s.check(ctx, "delete ref"); err != nil {
		return err
	}
	if err := k.Validate(); err != nil {
		return fmt.Errorf("stack %q: delete ref: %w", s.root.name, err)
	}
	return s.deleteAll(ctx, "delete ref", k.String(), func(e *stackEntry) error { return e.Tier.DeleteRef(ctx, k) })
}
