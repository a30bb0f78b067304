package registry

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// retryTransport retries idempotent requests on 429, 5xx (except 501) and
// connection resets, with exponential backoff and full jitter, honouring
// Retry-After (delta seconds or HTTP-date) up to Config.MaxRetryAfter; a
// longer Retry-After fails the request at once with an error wrapping
// ErrUnreachable. It sits below ggcr's auth transports, so token and ping
// requests are retried too.
type retryTransport struct {
	inner http.RoundTripper
	cfg   *Config
	m     *metrics
	now   func() time.Time
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead && req.GetBody == nil && req.Body != nil && req.Body != http.NoBody {
		return t.inner.RoundTrip(req)
	}
	for attempt := 1; ; attempt++ {
		r := req
		if attempt > 1 && req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			r = req.Clone(req.Context())
			r.Body = body
		}
		resp, err := t.inner.RoundTrip(r)
		var reason string
		var wait time.Duration
		haveWait := false
		switch {
		case err != nil:
			if !retryableNetError(err) {
				return nil, err
			}
			reason = "connection"
		case resp.StatusCode == http.StatusTooManyRequests || (resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented):
			reason = strconv.Itoa(resp.StatusCode)
			if ra, ok := parseRetryAfter(resp.Header.Get("Retry-After"), t.now()); ok {
				if ra > t.cfg.MaxRetryAfter {
					// Not worth waiting for: fail now so the caller can go
					// elsewhere (a mirror, the origin, another tier).
					drain(resp)
					return nil, fmt.Errorf("%w: %s %s answered HTTP %d with Retry-After %s, longer than the %s the client waits",
						ErrUnreachable, req.Method, req.URL.Host, resp.StatusCode, ra, t.cfg.MaxRetryAfter)
				}
				wait, haveWait = ra, true
			}
		default:
			return resp, nil
		}
		if attempt >= t.cfg.MaxAttempts {
			return resp, err
		}
		if resp != nil {
			drain(resp)
		}
		if !haveWait {
			wait = backoff(t.cfg.BaseDelay, t.cfg.MaxDelay, attempt)
		}
		t.m.retries.WithLabelValues(t.m.host(req.URL.Host), reason).Inc()
		if serr := t.cfg.Sleep(req.Context(), wait); serr != nil {
			return nil, serr
		}
	}
}

// drain reads a little of a response that will not be used, so that its
// connection can be reused, and closes it. The read is bounded in bytes
// here and in time by progressTransport.
func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// backoff returns the wait before attempt+1: base*2^(attempt-1), capped at
// max, with full jitter in [d/2, d].
func backoff(base, max time.Duration, attempt int) time.Duration {
	d := base
	for i := 1; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(half)+1))
}

// parseRetryAfter parses a Retry-After value: delta seconds or an HTTP-date.
// A date in the past means "now" (0). It reports false for an absent or
// malformed value.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		if secs > int64(24*time.Hour/time.Second) {
			secs = int64(24 * time.Hour / time.Second)
		}
		return time.Duration(secs) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		d := t.Sub(now)
		if d < 0 {
			d = 0
		}
		return d, true
	}
	return 0, false
}
