package tiers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/strata-oci/strata/blob"
)

// Put stores the blob in every tier of the view from one pass over r: the
// tiers' Puts run at once, each fed the same chunks, each verifying and
// committing on its own; no tier is handed the end of the stream unless r
// held exactly size bytes hashing to d. Tiers that decline the size
// (blob.ErrTooLarge) or are unavailable are skipped.
//
// Put succeeds if at least one tier holds the blob afterwards; failures of
// the other tiers are counted in the metrics, not returned. If no tier
// stored it, the error is, in this order of preference: the source's own
// failure (a *blob.MismatchError for wrong content), the first other tier
// error, blob.ErrUnavailable, blob.ErrTooLarge.
func (s *Stack) Put(ctx context.Context, d blob.Digest, size int64, r io.Reader) error {
	if err := s.check(ctx, "put"); err != nil {
		return err
	}
	if err := blob.ValidateDigest(d); err != nil {
		return fmt.Errorf("stack %q: put: %w", s.root.name, err)
	}
	if size < 0 {
		return fmt.Errorf("stack %q: put %s: %w: negative size %d", s.root.name, d, blob.ErrInvalidDigest, size)
	}
	// Once the tiers' Puts have returned, pending fills of d no longer
	// answer a later Open with their miss (see Stack).
	defer s.root.flights.wrote(d)
	var cands []*stackEntry
	for _, e := range s.ents {
		if size < e.declines.Load() {
			cands = append(cands, e)
		}
	}
	switch {
	case len(s.ents) == 0:
		return fmt.Errorf("stack %q: put %s: %w: the view has no tiers", s.root.name, d, blob.ErrUnavailable)
	case len(cands) == 0:
		return fmt.Errorf("stack %q: put %s: %d bytes: %w by every tier", s.root.name, d, size, blob.ErrTooLarge)
	case len(cands) == 1:
		err := cands[0].Tier.Put(ctx, d, size, r)
		if errors.Is(err, blob.ErrTooLarge) {
			cands[0].noteDecline(size)
		}
		if err != nil {
			return fmt.Errorf("stack %q: %w", s.root.name, err)
		}
		return nil
	}

	if size <= smallBlob {
		return s.putSmall(ctx, d, size, r, cands)
	}
	sinks := make([]*sink, len(cands))
	errs := make([]error, len(cands))
	results := make(chan int, len(cands))
	for i := range cands {
		sinks[i] = newSink(nil)
	}
	t := newTee(d, size, sinks...) // before any tier can read a sink
	for i, e := range cands {
		go func() {
			errs[i] = e.Tier.Put(ctx, d, size, sinks[i])
			sinks[i].Close()
			results <- i
		}()
	}
	srcErr := t.run(ctx, blob.NewVerifier(r, d, size, nil))
	if errors.Is(srcErr, errNoReaders) {
		// Every tier returned before the end (already held, declined or
		// failed): their results decide.
		srcErr = nil
	}
	end := io.EOF
	if srcErr != nil {
		end = fmt.Errorf("stack %q: put %s: %w", s.root.name, d, srcErr)
	}
	for i := range sinks {
		t.terminate(i, end)
	}
	for range cands {
		<-results
	}
	t.release()

	if srcErr != nil {
		return end
	}
	return s.putOutcome(cands, size, errs)
}

// smallBlob is the size up to which the stack reads a blob whole (verified)
// before handing it to tiers, instead of streaming it through a tee: for
// small blobs the tee's goroutines cost more than the copy.
const smallBlob = 64 << 10

// putSmall reads a small blob whole, verifies it, and puts it into each
// candidate tier in turn.
func (s *Stack) putSmall(ctx context.Context, d blob.Digest, size int64, r io.Reader, cands []*stackEntry) error {
	buf, err := readVerified(r, d, size)
	if err != nil {
		return fmt.Errorf("stack %q: put %s: %w", s.root.name, d, err)
	}
	errs := make([]error, len(cands))
	for i, e := range cands {
		errs[i] = e.Tier.Put(ctx, d, size, bytes.NewReader(buf))
		if ctx.Err() != nil {
			return s.stop(ctx, "put", string(d), errs[i])
		}
	}
	return s.putOutcome(cands, size, errs)
}

// readVerified reads exactly size bytes hashing to d from r.
func readVerified(r io.Reader, d blob.Digest, size int64) ([]byte, error) {
	buf := make([]byte, size)
	v := blob.NewVerifier(r, d, size, nil)
	if _, err := io.ReadFull(v, buf); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || err == io.EOF {
			// A short source: let the verifier name the mismatch.
			_, err = v.Read(make([]byte, 1))
		}
		return nil, err
	}
	// The verifier reports the end (io.EOF) only after the digest matched.
	var one [1]byte
	if n, err := v.Read(one[:]); n != 0 || err != io.EOF {
		if err == nil || err == io.EOF {
			err = fmt.Errorf("%w: source longer than %d bytes", blob.ErrMismatch, size)
		}
		return nil, err
	}
	return buf, nil
}

// putOutcome folds the tiers' Put results as Put documents, remembering
// declines.
func (s *Stack) putOutcome(cands []*stackEntry, size int64, errs []error) error {
	var firstErr, unavailable, declined error
	stored := false
	for i, err := range errs {
		switch {
		case err == nil:
			stored = true
		case errors.Is(err, blob.ErrTooLarge):
			cands[i].noteDecline(size)
			if declined == nil {
				declined = err
			}
		case errors.Is(err, blob.ErrUnavailable):
			if unavailable == nil {
				unavailable = err
			}
		default:
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	switch {
	case stored:
		s.logPartial("put", cands, errs)
		return nil
	case firstErr != nil:
		return fmt.Errorf("stack %q: %w", s.root.name, firstErr)
	case unavailable != nil:
		return fmt.Errorf("stack %q: %w", s.root.name, unavailable)
	default:
		return fmt.Errorf("stack %q: %w", s.root.name, declined)
	}
}

// logPartial tells the Logger which tiers failed a write that others
// took (the caller sees success): a shared tier that keeps refusing writes
// is otherwise visible only in the metrics. A tier declining a size, or
// refs it does not keep (a read-only ActionCache), is no failure.
func (s *Stack) logPartial(op string, cands []*stackEntry, errs []error) {
	for i, err := range errs {
		if err != nil && !errors.Is(err, blob.ErrTooLarge) && !errors.Is(err, blob.ErrUnsupported) {
			s.root.log.Warn("tier failed a write the other tiers took", "stack", s.root.name, "op", op, "tier", cands[i].Tier.Name(), "err", err)
		}
	}
}

// Delete removes d from every tier of the view, bottom-up (so a fill that
// starts meanwhile cannot copy it back from below; one that already found d
// still can, see Stack). Tiers that cannot delete
// (blob.ErrUnsupported) are skipped. It returns blob.ErrNotFound only if no
// tier held d, and an error joining every tier failure (unavailability
// included: the blob may still be there) if any tier failed.
func (s *Stack) Delete(ctx context.Context, d blob.Digest) error {
	if err := s.check(ctx, "delete"); err != nil {
		return err
	}
	if err := blob.ValidateDigest(d); err != nil {
		return fmt.Errorf("stack %q: delete: %w", s.root.name, err)
	}
	return s.deleteAll(ctx, "delete", string(d), func(e *stackEntry) error { return e.Tier.Delete(ctx, d) })
}

// deleteAll runs del on every tier bottom-up and folds the results as
// Delete and DeleteRef document.
func (s *Stack) deleteAll(ctx context.Context, op, what string, del func(*stackEntry) error) error {
	var (
		deleted, notFound bool
		errs              []error
	)
	for i := len(s.ents) - 1; i >= 0; i-- {
		err := del(s.ents[i])
		switch {
		case err == nil:
			deleted = true
		case errors.Is(err, blob.ErrNotFound):
			notFound = true
		case errors.Is(err, blob.ErrUnsupported):
		default:
			if ctx.Err() != nil {
				return s.stop(ctx, op, what, err)
			}
			errs = append(errs, err)
		}
	}
	switch {
	case len(errs) > 0:
		return fmt.Errorf("stack %q: %s %s: %w", s.root.name, op, what, errors.Join(errs...))
	case deleted:
		return nil
	case notFound:
		return fmt.Errorf("stack %q: %s %s: %w", s.root.name, op, what, blob.ErrNotFound)
	case len(s.ents) == 0:
		return fmt.Errorf("stack %q: %s %s: %w", s.root.name, op, what, blob.ErrNotFound)
	default:
		return fmt.Errorf("stack %q: %s %s: %w by every tier", s.root.name, op, what, blob.ErrUnsupported)
	}
}
