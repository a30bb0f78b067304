package reapi

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/strata-oci/strata/blob"
)

// Errors private to the package; they never escape unwrapped.
var (
	// errStalled is the cause set when a stream made no progress in time
	// (CallTimeout for its first message or final answer, StallTimeout
	// in between).
	errStalled = errors.New("stream made no progress in time")
	// errCircuitOpen is returned while the breaker refuses calls.
	errCircuitOpen = errors.New("circuit breaker open after repeated failures")
	// errClosed is returned by every call after Close.
	errClosed = errors.New("tier is closed")
	// errReaderClosed is returned by Read after Close.
	errReaderClosed = errors.New("reapi: read after Close")
)

// classify says what an RPC error means for server health.
func classify(ctx context.Context, err error) outcome {
	if err == nil {
		return outcomeSuccess
	}
	if ctx.Err() != nil {
		return outcomeNeutral // the caller gave up
	}
	if errors.Is(err, errStalled) {
		return outcomeFailure
	}
	st, ok := status.FromError(err)
	if !ok {
		return outcomeFailure
	}
	switch st.Code() {
	case codes.OK, codes.NotFound, codes.AlreadyExists, codes.InvalidArgument,
		codes.FailedPrecondition, codes.OutOfRange:
		// The server is up and answered.
		return outcomeSuccess
	}
	return outcomeFailure
}

// retryable reports whether an attempt that failed with err may be retried.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.ResourceExhausted:
		return true
	}
	return false
}

// convert turns an error from a call into one that wraps a blob sentinel:
// NotFound becomes blob.ErrNotFound, a cancelled caller context its own
// error, and every other server or transport failure blob.ErrUnavailable
// (the stack falls through to the next tier). Errors that already wrap a
// blob sentinel keep it. The text names the tier, the operation and its
// subject (a digest or ref key), plus the gRPC code and message; it never
// holds request metadata.
func (t *Tier) convert(ctx context.Context, op, subject string, err error) error {
	if err == nil {
		return nil
	}
	prefix := fmt.Sprintf("reapi %q: %s %s", t.cfg.Name, op, subject)
	switch {
	case errors.Is(err, blob.ErrNotFound), errors.Is(err, blob.ErrUnavailable),
		errors.Is(err, blob.ErrMismatch), errors.Is(err, blob.ErrInvalidDigest),
		errors.Is(err, blob.ErrInvalidRef), errors.Is(err, blob.ErrUnsupported),
		errors.Is(err, blob.ErrTooLarge):
		return fmt.Errorf("%s: %w", prefix, err)
	case errors.Is(err, errClosed), errors.Is(err, errCircuitOpen), errors.Is(err, errStalled):
		return fmt.Errorf("%s: %w: %w", prefix, blob.ErrUnavailable, err)
	case ctx.Err() != nil:
		return fmt.Errorf("%s: %w", prefix, ctx.Err())
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w: %v", prefix, blob.ErrUnavailable, err)
	}
	if st.Code() == codes.NotFound {
		return fmt.Errorf("%s: %w (server: %s)", prefix, blob.ErrNotFound, st.Message())
	}
	return fmt.Errorf("%s: %w: server returned %s: %s", prefix, blob.ErrUnavailable, st.Code(), st.Message())
}
