package overlay

import (
	"fmt"
	"sync/atomic"
)

// imageBudget is one Materialize call's image-wide limits
// (Config.MaxImageBytes, MaxImageEntries): the layers it extracts charge
// their bytes and entries while they are written (layers extract in
// parallel: the counters are shared), the layers it reuses their recorded
// size. A limit <= 0 is no bound.
type imageBudget struct {
	maxBytes, maxEntries int64
	bytes, entries       atomic.Int64
}

// charge counts n bytes about to be written.
func (b *imageBudget) charge(n int64) error {
	if b.maxBytes > 0 && b.bytes.Add(n) > b.maxBytes {
		return fmt.Errorf("%w: the image's layers hold more than %d bytes of file content (MaxImageBytes)", ErrBudgetExceeded, b.maxBytes)
	}
	return nil
}

// entry counts one tar entry about to be applied.
func (b *imageBudget) entry() error {
	if b.maxEntries > 0 && b.entries.Add(1) > b.maxEntries {
		return fmt.Errorf("%w: the image's layers hold more than %d entries (MaxImageEntries)", ErrBudgetExceeded, b.maxEntries)
	}
	return nil
}

// reuse counts a layer already extracted, of size bytes.
func (b *imageBudget) reuse(size int64) error { return b.charge(size) }
