package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
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
func transportError(op, host, repo string, err error) error {
	var terr *transport.Error
	switch {
	case errors.Is(err, ErrDeniedAddress), errors.Is(err, ErrTooLarge), errors.Is(err, blob.ErrMismatch):
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
