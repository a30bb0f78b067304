package registry

import (
	"context"
	"fmt"
	"log/slog"
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
	DefaultMaxRetryAfter         = 10 * time.Second
	DefaultMaxResumes            = 5
	DefaultMirrorTimeout         = 10 * time.Second
	DefaultDialTimeout           = 30 * time.Second
	DefaultResponseHeaderTimeout = 60 * time.Second
	DefaultIdleTimeout           = 30 * time.Second
	DefaultMinRate               = 1 << 10
	DefaultMinRateWindow         = 30 * time.Second
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

	// Parallel reads large blobs over several Range requests at once;
	// off unless Streams is above 1 (see ParallelConfig).
	Parallel ParallelConfig

	// MaxManifestSize caps manifests and indexes (default 10 MiB).
	MaxManifestSize int64
	// MaxBlob caps blobs; 0 means no cap.
	MaxBlob int64

	// MaxAttempts bounds the attempts per HTTP request on 429, 5xx and
	// connection resets (default 5; 1 disables retries).
	MaxAttempts int
	// BaseDelay and MaxDelay shape the exponential backoff with jitter
	// between attempts (defaults 200 ms and 10 s).
	BaseDelay, MaxDelay time.Duration
	// MaxRetryAfter is the longest Retry-After the client waits for
	// (default 10 s). A registry asking for longer is not retried: the
	// request fails at once with an error wrapping ErrUnreachable that
	// names the host and the wait it asked for, so the caller can fail
	// over instead of sleeping (a busy registry rarely recovers within a
	// minute, and waiting MaxAttempts times its Retry-After is how one
	// request used to take four minutes). With MaxAttempts, it bounds the
	// time one request spends waiting between attempts to
	// (MaxAttempts-1) * max(MaxDelay, MaxRetryAfter): 40 s by default.
	MaxRetryAfter time.Duration
	// MaxResumes bounds how often one blob download is resumed with a Range
	// request after the connection broke (default 5; negative disables).
	MaxResumes int

	// DialTimeout and ResponseHeaderTimeout bound connecting and waiting for
	// response headers (defaults 30 s and 60 s).
	DialTimeout, ResponseHeaderTimeout time.Duration

	// IdleTimeout bounds the wait for the next byte of any response body
	// (ping, token, manifest, blob, error bodies), counted only while the
	// client is waiting to read, never while the caller is busy elsewhere.
	// Default 30 s: long enough for a registry or pull-through cache that
	// pauses while it fetches from upstream or for a congested link, short
	// enough that a stalled download is resumed or failed over within a
	// minute (containerd and Docker have no such bound; a hung pull stays
	// hung). Negative disables it.
	//
	// MinRate (bytes per second) and MinRateWindow make a body that keeps
	// trickling fail too: once the client has waited MinRateWindow for a
	// body, in each successive MinRateWindow of waiting it must receive at
	// least MinRate*MinRateWindow bytes. Defaults 1 KiB/s over 30 s, a
	// rate any working link exceeds by orders of magnitude while a body
	// sent a byte at a time fails after 30 s (the rule of Cargo's
	// low-speed-limit; curl's --speed-limit). The rate is checked as data
	// arrives, so a body that sends nothing at all is IdleTimeout's to
	// catch. A negative MinRate disables the rule.
	//
	// A body that breaks either rule fails with an error wrapping
	// ErrStalled (and so ErrUnreachable) naming the host, the request and
	// what it did ("no data for 30s after 1.2 MiB"). A blob download
	// resumes from where it stopped, within MaxResumes; other requests
	// fail and a mirror hands over to the next endpoint. None of this
	// bounds the total time of a call, which is the caller's context's
	// job: a body may legitimately arrive at MinRate for hours.
	IdleTimeout   time.Duration
	MinRate       int64
	MinRateWindow time.Duration

	// Metrics, if not nil, receives the client's Prometheus collectors.
	Metrics prometheus.Registerer
	// MetricHosts are hosts ("host[:port]") that label the metrics by
	// name, besides the registries named in Mirrors and their mirrors'
	// endpoints (Docker Hub's aliases count as one). Requests to any other
	// host, including token servers and the storage a registry redirects
	// to, are labelled OtherHost: a caller chooses the hosts it fetches
	// from, and must not be able to add metric series without bound.
	MetricHosts []string

	// Sleep waits between retries; nil uses a timer. Tests inject one to
	// count and record waits instead of sleeping. It must return ctx.Err()
	// when ctx ends first.
	Sleep func(ctx context.Context, d time.Duration) error

	// UserAgent is sent with every request (default "strata").
	UserAgent string

	// Logger receives a line for every mirror the client moved past (the
	// registry, the mirror's host and why: timeout, not_found, mismatch,
	// ...; Warn when the mirror served wrong bytes, Info otherwise). It
	// never receives credentials, tokens or header values. nil: nothing is
	// logged.
	Logger *slog.Logger
}

// Mirror is one mirror of a registry (a pull-through cache or a copy). For
// content named by digest (Client.Manifest of a digest reference,
// Client.Blob) the client tries a registry's mirrors in order, then the
// registry itself; tags, and whether a repository holds a digest
// (Client.Resolve, Head, CheckAccess), are asked of the registry only. A
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
	if out.MaxManifestSize < 0 || out.MaxBlob < 0 {
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
	if err := out.Parallel.withDefaults(); err != nil {
		return out, err
	}
	if out.DialTimeout == 0 {
		out.DialTimeout = DefaultDialTimeout
	}
	if out.ResponseHeaderTimeout == 0 {
		out.ResponseHeaderTimeout = DefaultResponseHeaderTimeout
	}
	if out.IdleTimeout == 0 {
		out.IdleTimeout = DefaultIdleTimeout
	}
	if out.MinRate == 0 {
		out.MinRate = DefaultMinRate
	}
	if out.MinRateWindow == 0 {
		out.MinRateWindow = DefaultMinRateWindow
	}
	if out.MinRateWindow < 0 {
		return out, fmt.Errorf("registry: Config.MinRateWindow %s < 0", out.MinRateWindow)
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

// ParallelConfig is how a large blob of known size is read over several
// HTTP Range requests at once: in parts of PartSize bytes, the one being
// delivered streamed to the caller, the next Streams-1 read ahead into
// buffers that Memory bounds for the whole client (a part that finds no
// room is read when the caller reaches it). The bytes are delivered in
// order and verified as one stream, as a single GET is. It pays where one
// connection is bound by latency or a per-connection limit (a distant
// registry, storage behind a CDN); on loopback or a datacenter link one
// stream is cheaper (docs/benchmarks.md). A registry that ignores Range
// (200 to the first part's request) is read as one stream.
type ParallelConfig struct {
	// Streams is the requests in flight per blob; 0 or 1 disables
	// parallel reads.
	Streams int
	// PartSize is the bytes of one part (default 8 MiB, at least
	// MinPartSize); blobs of more than one part are read in parts.
	PartSize int64
	// Memory bounds the read-ahead buffers of the whole client (default
	// 64 MiB; at least one part).
	Memory int64
}

// Parallel read defaults and bounds.
const (
	DefaultPartSize       = 8 << 20
	DefaultParallelMemory = 64 << 20
	MinPartSize           = 64 << 10
	maxParallelStreams    = 64
)

// enabled reports whether large blobs are read in parts.
func (c ParallelConfig) enabled() bool { return c.Streams > 1 }

func (c *ParallelConfig) withDefaults() error {
	if c.Streams < 0 || c.Streams > maxParallelStreams {
		return fmt.Errorf("registry: Config.Parallel.Streams %d: want 0 to %d", c.Streams, maxParallelStreams)
	}
	if c.PartSize == 0 {
		c.PartSize = DefaultPartSize
	}
	if c.PartSize < MinPartSize {
		return fmt.Errorf("registry: Config.Parallel.PartSize %d < %d", c.PartSize, MinPartSize)
	}
	if c.Memory == 0 {
		c.Memory = DefaultParallelMemory
	}
	if c.Memory < c.PartSize {
		return fmt.Errorf("registry: Config.Parallel.Memory %d < PartSize %d", c.Memory, c.PartSize)
	}
	return nil
}
