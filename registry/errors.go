package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/strata-oci/strata/blob"
)

// Sentinel errors. Every error the Client returns wraps one of them (or a
// blob sentinel such as blob.ErrMismatch) together with the registry host and
// repository; test with errors.Is. HTTP statuses never leave this package.
var (
	// ErrDenied: the registry refused the credentials (HTTP 401 or 403).
	ErrDenied = errors.New("access denied")
	// ErrNotFound: the registry does not have the repository, manifest or
	// blob. It wraps blob.ErrNotFound.
	ErrNotFound = fmt.Errorf("registry: %w", blob.ErrNotFound)
	// ErrUnreachable: the registry could not be reached or kept failing
	// (connection refused or reset, timeouts, 5xx after all retries). It
	// wraps blob.ErrUnavailable.
	ErrUnreachable = fmt.Errorf("registry unreachable: %w", blob.ErrUnavailable)
	// ErrStalled: a response body stopped (no byte for Config.IdleTimeout)
	// or crawled (below Config.MinRate). It wraps ErrUnreachable, so a
	// caller that fails over on an unreachable registry fails over on a
	// stalled one too. The error names the host, the request and what the
	// registry did.
	ErrStalled = fmt.Errorf("%w: response stalled", ErrUnreachable)
	// ErrTooLarge: the content is larger than the configured cap. It wraps
	// blob.ErrTooLarge.
	ErrTooLarge = fmt.Errorf("registry: %w", blob.ErrTooLarge)
	// ErrDeniedAddress: the network policy refused to connect to an address
	// (loopback, private, link-local, ...). The error names the IP.
	ErrDeniedAddress = errors.New("address denied by network policy")
	// ErrInvalidReference: a malformed image reference or repository name.
	ErrInvalidReference = errors.New("invalid image reference")
	// ErrProtocol: the registry answered in a way the protocol does not
	// allow (unexpected status, missing headers, bad Content-Range).
	ErrProtocol = errors.New("registry protocol error")
)

// statusError converts an HTTP response status into a sentinel error. It is
// the one place where HTTP statuses become errors. The body is not included:
// registries echo request details there.
func statusError(op, host, repo string, code int) error {
	var s error
	switch {
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		s = ErrDenied
	case code == http.StatusNotFound:
		s = ErrNotFound
	case code == http.StatusTooManyRequests || code >= 500:
		s = ErrUnreachable
	default:
		s = ErrProtocol
	}
	return fmt.Errorf("%s %s/%s: %w (HTTP %d)", op, host, repo, s, code)
}

// blobStatusError is statusError for a blob GET, which the registry may
// have redirected to a storage host: a 401 or 403 from there (an expired
// signed URL, say) is not the registry denying the caller, so it is
// reported as ErrUnreachable rather than ErrDenied.
func blobStatusError(op, host, repo string, resp *http.Response) error {
	code := resp.StatusCode
	if resp.Request != nil && resp.Request.URL.Host != host && (code == http.StatusUnauthorized || code == http.StatusForbidden) {
		return fmt.Errorf("%s %s/%s: %w: storage host %s refused the redirected request (HTTP %d)", op, host, repo, ErrUnreachable, resp.Request.URL.Host, code)
	}
	return statusError(op, host, repo, code)
}

// transportError classifies an error from the HTTP stack (dial, TLS, token
// exchange, ...) and wraps it with a sentinel. Errors that already carry one
// of our sentinels, a policy denial or a context error are kept as they are.
//
// URLs in err are redacted first (see redactError): a redirect to a storage
// host carries a pre-signed query, a bearer capability, and the Location a
// registry sends may hold userinfo.
func transportError(op, host, repo string, err error) error {
	err = redactError(err)
	var terr *transport.Error
	switch {
	case errors.Is(err, ErrDeniedAddress), errors.Is(err, ErrTooLarge), errors.Is(err, blob.ErrMismatch), errors.Is(err, ErrUnreachable):
		return fmt.Errorf("%s %s/%s: %w", op, host, repo, err)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("%s %s/%s: %w", op, host, repo, err)
	case errors.As(err, &terr):
		// ggcr's token exchange reports the token server's status this way.
		return statusError(op, host, repo, terr.StatusCode)
	}
	return fmt.Errorf("%s %s/%s: %w: %w", op, host, repo, ErrUnreachable, err)
}

// retryableNetError reports whether a transport-level error is worth
// retrying: connection resets, aborted connections and unexpected EOFs (a
// server or proxy dropping the connection), and timeouts that are not the
// caller's context deadline.
func retryableNetError(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrDeniedAddress) {
		return false
	}
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// redactURL cuts a URL down to scheme://host/path: userinfo, query and
// fragment go (a pre-signed storage URL's query is a bearer capability).
// A string that does not parse as a URL is cut by hand the same way.
func redactURL(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		if u.Opaque != "" {
			// scheme:opaque has no host or path to keep.
			return u.Scheme + ":..."
		}
		r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
		out := r.String()
		if r.Scheme != "" && r.Host == "" && r.Path == "" && strings.HasPrefix(raw, r.Scheme+"://") {
			out = r.Scheme + "://" // url.URL drops an empty authority
		}
		return out
	}
	if i := strings.IndexAny(raw, "?#"); i >= 0 {
		raw = raw[:i]
	}
	if scheme, rest, ok := strings.Cut(raw, "://"); ok {
		auth, path, _ := strings.Cut(rest, "/")
		if i := strings.LastIndexByte(auth, '@'); i >= 0 {
			auth = auth[i+1:]
		}
		raw = scheme + "://" + auth
		if path != "" || strings.Contains(rest, "/") {
			raw += "/" + path
		}
	}
	return raw
}

var (
	// urlToken matches a URL written bare into a message: it ends at white
	// space or a quote.
	urlToken = regexp.MustCompile(`[A-Za-z][A-Za-z0-9+.-]*://[^\s"'<>]*`)
	// quotedToken matches a Go-quoted string (%q), which url.Error and most
	// messages use for URLs.
	quotedToken = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
)

// redactText redacts every URL in a message. A quoted string that is a URL
// is redacted as a whole, so a query holding white space or quotes cannot
// escape the cut; bare URLs end at white space or a quote.
func redactText(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	s = quotedToken.ReplaceAllStringFunc(s, func(q string) string {
		if !strings.Contains(q, "://") {
			return q
		}
		u, err := strconv.Unquote(q)
		if err != nil {
			return q // the bare pass below still applies
		}
		if m := urlToken.FindStringIndex(u); m != nil && m[0] == 0 {
			return strconv.Quote(redactURL(u))
		}
		return strconv.Quote(urlToken.ReplaceAllStringFunc(u, redactURL))
	})
	return urlToken.ReplaceAllStringFunc(s, redactURL)
}

// redactError returns err with every URL in its message cut down by
// redactURL, so that no error this package returns holds a credential or a
// signed query. errors.Is and errors.As see the same chain as before, with
// one difference: a *url.Error found with errors.As is a copy whose URL is
// redacted. err itself is never modified (it may be shared: token fetches
// are deduplicated across goroutines).
func redactError(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	clean := redactText(msg)
	if ue, ok := err.(*url.Error); ok {
		if clean == msg && redactURL(ue.URL) == ue.URL {
			return err
		}
		r := redactURLError(ue)
		if r.Error() == clean {
			return r // the usual case: keep the type net/http returns
		}
	} else if clean == msg {
		var ue *url.Error
		if !errors.As(err, &ue) || redactURL(ue.URL) == ue.URL {
			return err
		}
	}
	re := redactedError{msg: clean, err: err}
	if _, ok := err.(net.Error); ok {
		return &redactedNetError{re}
	}
	return &re
}

// redactURLError returns a copy of ue with its URL redacted and its Err
// redacted if its message holds a URL.
func redactURLError(ue *url.Error) *url.Error {
	inner := ue.Err
	if inner != nil && redactText(inner.Error()) != inner.Error() {
		inner = redactError(inner)
	}
	return &url.Error{Op: ue.Op, URL: redactURL(ue.URL), Err: inner}
}

// redactedError is an error whose message has had its URLs redacted. It
// unwraps to the original error, so sentinels and error types are found as
// before, but errors.As for a *url.Error yields a redacted copy.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// As hands out a redacted copy of the first *url.Error in the chain.
func (e *redactedError) As(target any) bool {
	p, ok := target.(**url.Error)
	if !ok {
		return false
	}
	var ue *url.Error
	if !errors.As(e.err, &ue) {
		return false
	}
	*p = redactURLError(ue)
	return true
}

// redactedNetError is a redactedError around a net.Error; it is a
// net.Error itself, as the original was.
type redactedNetError struct{ redactedError }

func (e *redactedNetError) Timeout() bool { return e.err.(net.Error).Timeout() }

//lint:ignore SA1019 net.Error requires it; delegated unchanged.
func (e *redactedNetError) Temporary() bool { return e.err.(net.Error).Temporary() }
