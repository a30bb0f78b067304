package blob

import (
	"errors"
	"fmt"
)

// Sentinel errors. Wrap them with %w and the digest or ref and the tier name;
// test with errors.Is.
var (
	ErrNotFound      = errors.New("not found")
	ErrUnavailable   = errors.New("tier unavailable")
	ErrMismatch      = errors.New("content mismatch")
	ErrInvalidDigest = errors.New("invalid digest")
	ErrInvalidRef    = errors.New("invalid ref key")
	ErrUnsupported   = errors.New("operation not supported by this tier")
	ErrTooLarge      = errors.New("blob too large for this tier")
)

// MismatchError reports content that did not match what was expected: a
// different digest, or a different size. It matches ErrMismatch under
// errors.Is.
type MismatchError struct {
	// Want is the expected digest and WantSize the expected size
	// (-1 when the size was not known in advance).
	Want     Digest
	WantSize int64
	// Got is the digest of the bytes actually read; empty when reading was
	// stopped early because the size was already wrong. GotSize is the number
	// of bytes seen (for an overlong stream, at least WantSize+1).
	Got     Digest
	GotSize int64
}

func (e *MismatchError) Error() string {
	switch {
	case e.WantSize >= 0 && e.GotSize != e.WantSize:
		if e.GotSize > e.WantSize {
			return fmt.Sprintf("content mismatch for %s: size exceeds expected %d bytes", e.Want, e.WantSize)
		}
		return fmt.Sprintf("content mismatch for %s: got %d bytes, want %d", e.Want, e.GotSize, e.WantSize)
	default:
		return fmt.Sprintf("content mismatch for %s: got digest %s (%d bytes)", e.Want, e.Got, e.GotSize)
	}
}

// Is makes errors.Is(err, ErrMismatch) true.
func (e *MismatchError) Is(target error) bool { return target == ErrMismatch }

// IsMiss reports whether err means "not here, ask elsewhere": a miss, an
// unavailable tier, or content that failed verification (which the tier that
// served it is expected to drop).
func IsMiss(err error) bool {
	return errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnavailable) || errors.Is(err, ErrMismatch)
}
