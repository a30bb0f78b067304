package reapi

import (
	"context"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
)

// attempt is one try of a call: its call options and whether it is the
// breaker's half-open probe.
type attempt struct {
	opts  []grpc.CallOption
	probe bool
}

// admit asks the breaker whether a call may go to the server. Before a
// probe it wakes the connection from its reconnect backoff and gives it up
// to probeWait to become ready, so the probe sees a server that is back
// rather than the connection's stale failure.
func (t *Tier) admit(ctx context.Context) (attempt, error) {
	if t.closed.Load() {
		return attempt{}, errClosed
	}
	ok, probe := t.breaker.allow()
	if !ok {
		return attempt{}, errCircuitOpen
	}
	if probe {
		t.awaitConnection(ctx)
	}
	return attempt{probe: probe}, nil
}

// probeWait bounds how long a probe waits for the connection. gRPC keeps
// reconnecting in the background (backoff at most 5s), so a server that
// came back during the cool-down is usually connected already; one that
// is slower to connect is caught by the next probe.
const probeWait = time.Second

// awaitConnection starts a connection attempt now and waits until the
// connection is ready, or min(probeWait, CallTimeout) passed.
func (t *Tier) awaitConnection(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, min(probeWait, t.cfg.CallTimeout))
	defer cancel()
	t.conn.ResetConnectBackoff()
	t.conn.Connect()
	for {
		s := t.conn.GetState()
		if s == connectivity.Ready || s == connectivity.Shutdown {
			return
		}
		if s == connectivity.Idle {
			t.conn.Connect()
		}
		if !t.conn.WaitForStateChange(ctx, s) {
			return
		}
	}
}

// done reports an attempt's outcome to the breaker.
func (t *Tier) done(ctx context.Context, a attempt, err error) {
	t.breaker.record(a.probe, classify(ctx, err))
}

// unary runs fn as a unary call: each attempt under CallTimeout, admitted
// by the breaker, retried with backoff on UNAVAILABLE and
// RESOURCE_EXHAUSTED up to Retries.MaxAttempts. It returns fn's last error
// unconverted (or a package error when the breaker or Close refused).
func (t *Tier) unary(ctx context.Context, fn func(ctx context.Context, opts ...grpc.CallOption) error) error {
	return t.retry(ctx, func(a attempt) error {
		actx, cancel := context.WithTimeout(ctx, t.cfg.CallTimeout)
		defer cancel()
		err := fn(actx, a.opts...)
		t.done(ctx, a, err)
		return err
	})
}

// retry runs try until it succeeds, fails with a non-retryable error, the
// attempts are used up, the breaker refuses, or ctx ends.
func (t *Tier) retry(ctx context.Context, try func(attempt) error) error {
	var err error
	for n := 1; ; n++ {
		a, aerr := t.admit(ctx)
		if aerr != nil {
			if err != nil && n > 1 {
				return err // report the server's error, not the breaker's
			}
			return aerr
		}
		err = try(a)
		if err == nil || !retryable(err) || n >= t.cfg.Retries.MaxAttempts || ctx.Err() != nil {
			return err
		}
		t.retries.Add(1)
		if serr := sleep(ctx, t.backoff(n)); serr != nil {
			return err
		}
	}
}

// backoff returns the delay after the n-th failed attempt: exponential from
// BackoffBase, capped at BackoffMax, with jitter in [d/2, d].
func (t *Tier) backoff(n int) time.Duration {
	d := t.cfg.Retries.BackoffBase
	for i := 1; i < n && d < t.cfg.Retries.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, t.cfg.Retries.BackoffMax)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func sleep(ctx context.Context, d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// watchdog cancels a stream whose next message does not arrive (or cannot
// be sent) in time. Arm it before a blocking Recv/Send and disarm it after;
// time the caller spends between reads does not count.
type watchdog struct {
	timer *time.Timer
	fired atomic.Bool
}

func newWatchdog(cancel context.CancelCauseFunc) *watchdog {
	w := &watchdog{}
	w.timer = time.AfterFunc(time.Hour, func() {
		w.fired.Store(true)
		cancel(errStalled)
	})
	w.timer.Stop()
	return w
}

// arm starts the clock: the stream is cancelled unless disarm is called
// within d.
func (w *watchdog) arm(d time.Duration) { w.timer.Reset(d) }
func (w *watchdog) disarm()             { w.timer.Stop() }
func (w *watchdog) stop()               { w.timer.Stop() }

// check rewrites err to errStalled when the watchdog cancelled the stream.
func (w *watchdog) check(err error) error {
	if err != nil && w.fired.Load() {
		return errStalled
	}
	return err
}
