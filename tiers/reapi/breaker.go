package reapi

import (
	"log/slog"
	"sync"
	"time"
)

// BreakerState is the circuit breaker's state.
type BreakerState int

// Breaker states.
const (
	// BreakerClosed: calls go to the server.
	BreakerClosed BreakerState = iota
	// BreakerOpen: calls fail at once with blob.ErrUnavailable.
	BreakerOpen
	// BreakerHalfOpen: the cool-down has passed and one probe call is in
	// flight; other calls fail at once until it returns.
	BreakerHalfOpen
)

func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half-open"
	}
	return "unknown"
}

// outcome is how a call ended, as far as server health is concerned.
type outcome int

const (
	outcomeSuccess outcome = iota // the server answered (including NotFound)
	outcomeFailure                // the server is unreachable, slow or failing
	outcomeNeutral                // says nothing about the server (caller cancelled)
)

// breaker is a consecutive-failure circuit breaker. It is safe for
// concurrent use.
type breaker struct {
	threshold int // <= 0: disabled
	coolDown  time.Duration
	now       func() time.Time
	log       *slog.Logger // opening and recovering, at Warn and Info
	name      string       // the tier's name, for the log

	mu       sync.Mutex
	state    BreakerState
	failures int // consecutive failures while closed
	openedAt time.Time
	probing  bool

	opens, rejected uint64
}

func newBreaker(cfg BreakerConfig, now func() time.Time, log *slog.Logger, name string) *breaker {
	return &breaker{threshold: cfg.Failures, coolDown: cfg.CoolDown, now: now, log: log, name: name}
}

// allow reports whether a call may go to the server, and whether it is the
// half-open probe (which must be reported back with its outcome).
func (b *breaker) allow() (ok, probe bool) {
	if b.threshold <= 0 {
		return true, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case BreakerClosed:
		return true, false
	case BreakerOpen:
		if b.now().Sub(b.openedAt) >= b.coolDown && !b.probing {
			b.state = BreakerHalfOpen
			b.probing = true
			return true, true
		}
	}
	b.rejected++
	return false, false
}

// record reports a call's outcome.
func (b *breaker) record(probe bool, o outcome) {
	if b.threshold <= 0 {
		return
	}
	b.mu.Lock()
	before := b.state
	defer func() {
		after := b.state
		b.mu.Unlock()
		switch {
		case after == BreakerOpen && before != BreakerOpen:
			b.log.Warn("reapi tier: circuit breaker opened; calls fail over to the next tier until a probe succeeds", "tier", b.name, "failures", b.threshold, "cool-down", b.coolDown)
		case after == BreakerClosed && before != BreakerClosed:
			b.log.Info("reapi tier: circuit breaker closed; the server answers again", "tier", b.name)
		}
	}()
	if probe {
		b.probing = false
	}
	switch o {
	case outcomeSuccess:
		// Any answer from the server proves it is back.
		b.state = BreakerClosed
		b.failures = 0
	case outcomeFailure:
		switch b.state {
		case BreakerClosed:
			b.failures++
			if b.failures >= b.threshold {
				b.open()
			}
		case BreakerHalfOpen:
			if probe {
				b.open()
			}
		}
	case outcomeNeutral:
		if probe && b.state == BreakerHalfOpen {
			// The probe told us nothing: stay open, let the next call probe.
			b.state = BreakerOpen
		}
	}
}

func (b *breaker) open() {
	b.state = BreakerOpen
	b.openedAt = b.now()
	b.failures = 0
	b.opens++
}

// BreakerStats is a snapshot of the circuit breaker.
type BreakerStats struct {
	State BreakerState
	// Opens counts transitions to open; Rejected counts calls refused
	// without contacting the server.
	Opens, Rejected uint64
}

func (b *breaker) stats() BreakerStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return BreakerStats{State: b.state, Opens: b.opens, Rejected: b.rejected}
}
