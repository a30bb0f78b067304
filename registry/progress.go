package registry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// maxPingBody is how much of a /v2/ ping's body is read. Nobody needs it
// (the status and WWW-Authenticate say everything), but ggcr drains it to
// reuse the connection; past this the body ends early and the connection
// is closed.
const maxPingBody = 64 << 10

// progressTransport makes every response body it returns a progressBody:
// one that fails when the registry stops sending (Config.IdleTimeout) or
// sends too slowly (Config.MinRate over Config.MinRateWindow), and, for a
// /v2/ ping, one that ends after maxPingBody bytes. It sits at the bottom
// of the client's transport stack, so pings, token responses, manifests,
// blobs, redirected storage responses and error bodies all pass through it.
//
// Each request gets its own cancellable context; a body that breaks a rule
// cancels it, which aborts the blocked read and drops the connection.
type progressTransport struct {
	inner http.RoundTripper
	cfg   *Config
	m     *metrics
}

func (t *progressTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancelCause(req.Context())
	resp, err := t.inner.RoundTrip(req.WithContext(ctx))
	if err != nil {
		cancel(nil)
		return nil, err
	}
	if resp.Body == nil || resp.Body == http.NoBody {
		// Nothing to watch; the connection is already free.
		cancel(nil)
		return resp, nil
	}
	limit := int64(-1)
	if req.Method == http.MethodGet && (req.URL.Path == "/v2/" || req.URL.Path == "/v2") {
		limit = maxPingBody
	}
	b := &progressBody{
		rc:      resp.Body,
		cancel:  cancel,
		what:    describeRequest(req),
		host:    t.m.host(req.URL.Host),
		idle:    t.cfg.IdleTimeout,
		minRate: t.cfg.MinRate,
		window:  t.cfg.MinRateWindow,
		limit:   limit,
		m:       t.m,
	}
	if b.idle > 0 {
		b.timer = time.AfterFunc(b.idle, b.onIdle)
		b.timer.Stop() // armed only inside Read
	}
	resp.Body = b
	return resp, nil
}

// describeRequest names a request for an error message: method, host and
// path, cut short. The query is left out (a signed storage URL carries a
// bearer capability there).
func describeRequest(req *http.Request) string {
	p := req.URL.EscapedPath()
	if len(p) > 128 {
		p = p[:128] + "..."
	}
	return req.Method + " " + req.URL.Host + p
}

// progressBody is a response body that enforces the progress rules (see
// progressTransport). Time is counted only inside Read, while the caller
// waits for the network: a caller that stops reading for a while is never
// blamed on the registry. Once a rule is broken the body is dead: every
// later Read returns the same error wrapping ErrStalled.
//
// Read must not be called concurrently (as any io.Reader); Close may be
// called at any time and more than once.
type progressBody struct {
	rc      io.ReadCloser
	cancel  context.CancelCauseFunc
	what    string // the request, for errors
	host    string // for metrics
	idle    time.Duration
	minRate int64
	window  time.Duration
	limit   int64 // the body ends after this many bytes; < 0: no limit
	m       *metrics
	timer   *time.Timer // the idle watchdog, armed only inside Read; nil if off

	n        int64         // bytes read
	winWait  time.Duration // time spent in Read in the current rate window
	winBytes int64         // bytes read in the current rate window

	mu        sync.Mutex
	err       error // set once a rule is broken
	idleFired bool  // the watchdog fired; Read makes err
}

func (b *progressBody) Read(p []byte) (int, error) {
	if err := b.failed(); err != nil {
		return 0, err
	}
	if b.limit >= 0 {
		if b.n >= b.limit {
			return 0, io.EOF
		}
		if rest := b.limit - b.n; int64(len(p)) > rest {
			p = p[:rest]
		}
	}
	if b.timer != nil && len(p) > 0 {
		b.timer.Reset(b.idle)
	}
	start := time.Now()
	n, err := b.rc.Read(p)
	if b.timer != nil {
		b.timer.Stop()
	}
	b.n += int64(n)
	if ferr := b.failed(); ferr != nil {
		// The watchdog fired and aborted the request; what arrived before
		// is good, the next Read reports the stall.
		if n > 0 {
			return n, nil
		}
		return 0, ferr
	}
	if err != nil {
		b.cancel(nil)
		return n, err
	}
	if serr := b.checkRate(time.Since(start), n); serr != nil {
		return n, serr
	}
	return n, nil
}

// checkRate adds one Read to the current window and, when the window is
// complete, fails the body if it brought fewer than minRate*window bytes.
func (b *progressBody) checkRate(waited time.Duration, n int) error {
	if b.minRate <= 0 || b.window <= 0 {
		return nil
	}
	b.winWait += waited
	b.winBytes += int64(n)
	if b.winWait < b.window {
		return nil
	}
	if float64(b.winBytes) < float64(b.minRate)*b.winWait.Seconds() {
		return b.fail("slow", fmt.Errorf("%w: %s sent only %s in %s of waiting (%s in all), below the minimum of %s/s",
			ErrStalled, b.what, formatBytes(b.winBytes), b.winWait.Round(time.Millisecond), formatBytes(b.n), formatBytes(b.minRate)))
	}
	b.winWait, b.winBytes = 0, 0
	return nil
}

// onIdle runs on the watchdog's goroutine when a Read waited b.idle. It
// aborts the request; the Read it interrupts makes the error, with the
// byte count that Read owns.
func (b *progressBody) onIdle() {
	b.mu.Lock()
	first := b.err == nil && !b.idleFired
	b.idleFired = true
	b.mu.Unlock()
	if first {
		b.m.stalls.WithLabelValues(b.host, "idle").Inc()
		b.cancel(fmt.Errorf("%w: %s sent no data for %s", ErrStalled, b.what, b.idle))
	}
}

// fail marks the body dead with err and aborts the request. Only Read
// calls it.
func (b *progressBody) fail(reason string, err error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return b.err
	}
	b.err = err
	b.m.stalls.WithLabelValues(b.host, reason).Inc()
	b.cancel(err)
	return err
}

// failed returns the error that killed the body, if any, making it for a
// watchdog that fired. Only Read calls it.
func (b *progressBody) failed() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil && b.idleFired {
		b.err = fmt.Errorf("%w: %s sent no data for %s after %s", ErrStalled, b.what, b.idle, formatBytes(b.n))
	}
	return b.err
}

// Close releases the connection and stops the watchdog.
func (b *progressBody) Close() error {
	if b.timer != nil {
		b.timer.Stop()
	}
	err := b.rc.Close()
	b.cancel(nil)
	return err
}

// formatBytes renders a byte count for people: "512 B", "1.2 MiB".
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
