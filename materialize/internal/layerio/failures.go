package layerio

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/strata-oci/strata/blob"
)

// ErrBudgetExceeded: writing a layer would go over a budget it shares
// with other work (a cache's byte budget, an image's total). It wraps
// ErrLimitExceeded, but unlike the per-layer limits it is not a property
// of the layer alone, so Failures does not remember it.
var ErrBudgetExceeded = fmt.Errorf("budget exceeded: %w", ErrLimitExceeded)

// Defaults of Failures.
const (
	DefaultFailureTTL  = 10 * time.Minute
	DefaultMaxFailures = 1024
)

// Failures remembers layers whose content failed (a per-layer limit, an
// invalid entry) so that a retry fails at once with the same error instead
// of downloading and decompressing the layer again (a compression bomb
// costs tens of seconds of CPU each time). Entries are keyed by layer
// digest and origin: a failure is met before the blob's digest is verified
// at its end, so a registry that serves other bytes under a digest can
// poison only its own origin's entry. Entries expire after TTL; at most Max
// are kept (the oldest go first).
//
// The zero value is ready to use (DefaultFailureTTL, DefaultMaxFailures).
// It is safe for concurrent use.
type Failures struct {
	TTL time.Duration
	Max int

	mu  sync.Mutex
	m   map[failureKey]failure
	now func() time.Time // for tests; nil: time.Now
}

type failureKey struct {
	digest blob.Digest
	origin string
}

type failure struct {
	err error
	at  time.Time
}

// Remembered is the error Check returns: the layer failed recently. It
// wraps the original error, so errors.Is sees the same sentinels.
type Remembered struct {
	Err error
	Age time.Duration
}

func (r *Remembered) Error() string {
	return fmt.Sprintf("%v (remembered: failed %s ago, not retried yet)", r.Err, r.Age.Round(time.Second))
}

func (r *Remembered) Unwrap() error { return r.Err }

// Remember records that layer d of origin failed with err. Only content
// errors belong here (see IsLayerLimit); the caller decides.
func (f *Failures) Remember(d blob.Digest, origin string, err error) {
	if err == nil {
		return
	}
	var r *Remembered
	if errors.As(err, &r) {
		return // already remembered: keep the first time
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.clock()
	if f.m == nil {
		f.m = map[failureKey]failure{}
	}
	k := failureKey{d, origin}
	if _, ok := f.m[k]; !ok && len(f.m) >= f.max() {
		f.expireLocked(now)
		for len(f.m) >= f.max() {
			var oldest failureKey
			first := true
			for k2, v := range f.m {
				if first || v.at.Before(f.m[oldest].at) {
					oldest, first = k2, false
				}
			}
			delete(f.m, oldest)
		}
	}
	f.m[k] = failure{err: err, at: now}
}

// Check returns a *Remembered wrapping the error layer d of origin failed
// with less than TTL ago, or nil.
func (f *Failures) Check(d blob.Digest, origin string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.m[failureKey{d, origin}]
	if !ok {
		return nil
	}
	age := f.clock().Sub(v.at)
	if age >= f.ttl() || age < 0 {
		delete(f.m, failureKey{d, origin})
		return nil
	}
	return &Remembered{Err: v.err, Age: age}
}

// Len is the number of entries held (expired ones included until they are
// looked up or pushed out).
func (f *Failures) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.m)
}

func (f *Failures) expireLocked(now time.Time) {
	for k, v := range f.m {
		if now.Sub(v.at) >= f.ttl() {
			delete(f.m, k)
		}
	}
}

func (f *Failures) clock() time.Time {
	if f.now != nil {
		return f.now()
	}
	return time.Now()
}

func (f *Failures) ttl() time.Duration {
	if f.TTL > 0 {
		return f.TTL
	}
	return DefaultFailureTTL
}

func (f *Failures) max() int {
	if f.Max > 0 {
		return f.Max
	}
	return DefaultMaxFailures
}

// IsLayerLimit reports whether err is a per-layer limit (the decompressed
// size, a layer's entries or bytes): ErrLimitExceeded but not
// ErrBudgetExceeded, which depends on other work.
func IsLayerLimit(err error) bool {
	return errors.Is(err, ErrLimitExceeded) && !errors.Is(err, ErrBudgetExceeded)
}
