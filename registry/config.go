package registry

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults used when the corresponding Config field is zero.
const (
	DefaultMaxManifestSize       = 10 << 20
	DefaultMaxAttempts           = 5
	DefaultBaseDelay             = 200 * time.Millisecond
	DefaultMaxDelay              = 10 * time.Second
	DefaultMaxRetryAfter         = 60 * time.Second
	DefaultMaxResumes            = 5
	DefaultMirrorTimeout         = 10 * time.Second
	DefaultDialTimeout           = 30 * time.Second
	DefaultResponseHeaderTimeout = 60 * time.Second
)

// Config configures a Client. The zero value is usable: no mirrors, the
// default network policy, proxies from the environment, default caps and
// retries, and no metrics.
type Config struct {
	// Mirrors maps a registry host, as Reference.Registry returns it
	// ("index.docker.io"; "docker.io" is accepted as an alias), to the
	// mirrors tried in order before that registry. See Mirror.
	Mirrors map[string][]Mirror

	// AllowCIDRs opens address ranges that the network policy denies by
	// default (loopback, private, link-local, site-local, CGNAT,
	// unspecified, multicast and reserved ranges, local-use NAT64, and the
	// IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms of them; see the
	// package documentation).
	// Tests allow "127.0.0.0/8"; a site with an internal registry allows its
	// range.
	AllowCIDRs []string

	// Proxy selects an HTTP proxy per request, as http.Transport.Proxy. Nil
	// means http.ProxyFromEnvironment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY);
	// NoProxy disables proxies. Through a proxy the policy checks the proxy's
	// own address at connect time and the target host by resolving it before
	// the request is sent; the proxy resolves the target again itself, so a
	// DNS answer that changes in between is only caught by the proxy.
	Proxy func(*http.Request) (*url.URL, error)

	// MaxManifestSize caps manifests and indexes (default 10 MiB).
	MaxManifestSize int64
	// MaxBlobSize caps blobs; 0 means no cap.
	MaxBlobSize int64

	// MaxAttempts bounds the attempts per HTTP request on 429, 5xx and
	// connection resets (default 5; 1 disables retries).
	MaxAttempts int
	// BaseDelay and MaxDelay shape the exponential backoff with jitter
	// between attempts (defaults 200 ms and 10 s).
	BaseDelay, MaxDelay time.Duration
	// MaxRetryAfter is the longest Retry-After the client waits for
	// (default 60 s); a registry asking for longer gets its response
	// returned (as ErrUnreachable) instead of a retry.
	MaxRetryAfter time.Duration
	// MaxResumes bounds how often one blob download is resumed with a Range
	// request after the connection broke (default 5; negative disables).
	MaxResumes int

	// DialTimeout and ResponseHeaderTimeout bound connecting and waiting for
	// response headers (defaults 30 s and 60 s).
	DialTimeout, ResponseHeaderTimeout time.Duration

	// Metrics, if not nil, receives the client's Prometheus collectors.
	Metrics prometheus.Registerer

	// Sleep waits between retries; nil uses a timer. Tests inject one to
	// count and record waits instead of sleeping. It must return ctx.Err()
	// when ctx ends first.
	Sleep func(ctx context.Context, d time.Duration) error

	// UserAgent is sent with every request (default "strata").
	UserAgent string
}

// Mirror is one mirror of a registry (a pull-through cache or a copy). The
// client tries a registry's mirrors in order, then the registry itself. A
// mirror's miss (404), error (5xx, denial, transport error, timeout) or bad
// content (a digest that does not match) moves on to the next one and is
// counted as a mirror fallback; bad content from a mirror is never served.
//
// Credentials: the authenticator a caller passes is for the origin registry
// only and is never sent to a mirror. A mirror is accessed with Auth, or
// anonymously when Auth is nil. Access proofs (CheckAccess) always go to the
// origin.
type Mirror struct {
	// Endpoint is the mirror's "host[:port]". Loopback, localhost and
	// RFC 1918 hosts are tried over https and then plain http; set Insecure
	// to allow plain http for other hosts.
	Endpoint string
	Insecure bool
	// Timeout bounds each attempt against this mirror up to its response
	// headers (for manifests, up to the whole body). Default 10 s.
	Timeout time.Duration
	// Auth authenticates to the mirror; nil means anonymous.
	Auth authn.Authenticator
}

// NoProxy is a Config.Proxy that never uses a proxy.
func NoProxy(*http.Request) (*url.URL, error) { return nil, nil }

func (c *Config) withDefaults() (Config, error) {
	out := *c
	if out.MaxManifestSize == 0 {
		out.MaxManifestSize = DefaultMaxManifestSize
	}
	if out.MaxManifestSize < 0 || out.MaxBlobSize < 0 {
		return out, fmt.Errorf("registry: Config: negative size cap")
	}
	if out.MaxAttempts == 0 {
		out.MaxAttempts = DefaultMaxAttempts
	}
	if out.MaxAttempts < 1 {
		return out, fmt.Errorf("registry: Config.MaxAttempts %d < 1", out.MaxAttempts)
	}
	if out.BaseDelay == 0 {
		out.BaseDelay = DefaultBaseDelay
	}
	if out.MaxDelay == 0 {
		out.MaxDelay = DefaultMaxDelay
	}
	if out.MaxRetryAfter == 0 {
		out.MaxRetryAfter = DefaultMaxRetryAfter
	}
	if out.MaxResumes == 0 {
		out.MaxResumes = DefaultMaxResumes
	}
	if out.DialTimeout == 0 {
		out.DialTimeout = DefaultDialTimeout
	}
	if out.ResponseHeaderTimeout == 0 {
		out.ResponseHeaderTimeout = DefaultResponseHeaderTimeout
	}
	if out.Proxy == nil {
		out.Proxy = http.ProxyFromEnvironment
	}
	if out.Sleep == nil {
		out.Sleep = sleep
	}
	if out.UserAgent == "" {
		out.UserAgent = "strata"
	}
	return out, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
