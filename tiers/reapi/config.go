package reapi

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
)

// Defaults used for zero Config fields.
const (
	DefaultName            = "reapi"
	DefaultCallTimeout     = 10 * time.Second
	DefaultStallTimeout    = 5 * time.Second
	DefaultMaxResumes      = 3
	DefaultMaxAttempts     = 3
	DefaultBackoffBase     = 50 * time.Millisecond
	DefaultBackoffMax      = 2 * time.Second
	DefaultBreakerFailures = 5
	DefaultBreakerCoolDown = 10 * time.Second
	DefaultExistenceTTL    = 30 * time.Second
	DefaultCacheEntries    = 65536

	DefaultParallelThreshold = 8 << 20
	DefaultPartSize          = 8 << 20
	DefaultParallelStreams   = 4
	DefaultReadAheadMemory   = 64 << 20
	// MinPartSize is the smallest Parallel.PartSize accepted.
	MinPartSize = 64 << 10
)

// Compression modes for Config.Compression.
const (
	// CompressionAuto uses zstd compressed-blobs when the server's
	// Capabilities list ZSTD (ByteStream: supported_compressors; batch
	// uploads: supported_batch_update_compressors).
	CompressionAuto = "auto"
	// CompressionOff always moves identity (uncompressed) bytes.
	CompressionOff = "off"
	// CompressionZstd uses zstd for ByteStream and batch uploads whatever the
	// Capabilities say, for servers that accept compressed-blobs without
	// advertising them.
	CompressionZstd = "zstd"
)

// Config configures a REAPI tier. Only Endpoint is required; zero fields
// take the defaults above.
//
// Config's String method redacts header values, so a Config may be printed;
// New never logs anything.
type Config struct {
	// Endpoint is "grpc://host:port" (plaintext) or "grpcs://host[:port]"
	// (TLS; port 443 when omitted).
	Endpoint string
	// Instance is the REAPI instance name; it may be empty.
	Instance string
	// TLS configures grpcs:// endpoints; setting any field with a grpc://
	// endpoint is an error.
	TLS TLSConfig
	// Headers are sent as gRPC metadata with every call (API keys such as
	// "x-buildbuddy-api-key"). Keys are lower-cased. Values are never
	// logged nor put in errors. With a grpc:// endpoint they travel in
	// plaintext.
	Headers map[string]string
	// CallTimeout bounds every unary call attempt, the wait for the first
	// message of a ByteStream Read (the server may have to fetch or
	// decompress the blob first) and for the answer that ends a ByteStream
	// Write (the server may verify and persist the blob). Default 10s.
	CallTimeout time.Duration
	// StallTimeout bounds how long a ByteStream Read or Write that has
	// started may make no progress: each wait for the next message, or to
	// send one, must end within it (an idle timeout: a long transfer that
	// keeps moving is never cut off, and time the caller spends between
	// Reads does not count). A stalled stream fails with
	// blob.ErrUnavailable, counts as a failure for the circuit breaker and
	// is not resumed (except a part read ahead by a parallel read, which
	// is read again from where it stopped when the caller reaches it; see
	// ParallelConfig). Default 5s.
	StallTimeout time.Duration
	// Retries configures retries of calls that failed with UNAVAILABLE or
	// RESOURCE_EXHAUSTED.
	Retries RetryConfig
	// Compression is CompressionAuto (default), CompressionOff or
	// CompressionZstd. Where zstd is on, it is still chosen per blob:
	// content that is already compressed (gzip, zstd, xz, bzip2 or lz4
	// magic) moves as identity; see the package comment.
	Compression string
	// Parallel configures ranged parallel reads of large blobs.
	Parallel ParallelConfig
	// BatchLimit caps the bytes of one BatchUpdateBlobs/BatchReadBlobs
	// request; 0 means the server's max_batch_total_size_bytes (4 MiB minus
	// 1 KiB when the server sets none). A smaller server limit always wins.
	BatchLimit int64
	// Breaker configures the circuit breaker.
	Breaker BreakerConfig
	// ExistenceTTL is how long a blob seen present (by FindMissingBlobs, Put
	// or a verified read) is assumed present without asking again; default
	// 30s, negative disables the existence cache. Only presence is cached.
	ExistenceTTL time.Duration
	// CacheEntries bounds the existence cache and the digest -> size map
	// (each); default 65536.
	CacheEntries int
	// Name identifies the tier in errors and Info.Tier; default "reapi".
	Name string
	// Now is the clock for ref expiry, the existence cache and the breaker;
	// default time.Now.
	Now func() time.Time
	// DialOptions are appended to the tier's own gRPC dial options (for
	// example a stats handler for tracing or byte counting).
	DialOptions []grpc.DialOption
	// Logger receives a Warn line when the circuit breaker opens (the tier
	// stops answering and reads fail over) and an Info line when it closes
	// again; nil discards them. Header values and credentials are never
	// logged.
	Logger *slog.Logger
}

// TLSConfig configures TLS for grpcs:// endpoints. Zero means TLS with the
// system roots and the endpoint's host name.
type TLSConfig struct {
	// CAFile is a PEM bundle of roots to trust instead of the system roots.
	CAFile string
	// CertFile and KeyFile are a PEM client certificate and key (mTLS);
	// both or neither.
	CertFile, KeyFile string
	// ServerName overrides the name verified in the server's certificate.
	ServerName string
	// InsecureSkipVerify disables verification of the server's certificate.
	// UNSAFE: anyone on the path can impersonate the server, read the API
	// keys in Headers and serve refs that point at their blobs (blob bytes
	// are still verified against their digests). For tests only.
	InsecureSkipVerify bool
}

func (c TLSConfig) isZero() bool { return c == TLSConfig{} }

// RetryConfig configures retries. A call is tried at most MaxAttempts times
// (default 3; 1 disables retries), sleeping a jittered exponential backoff
// between BackoffBase (default 50ms) and BackoffMax (default 2s). Only
// UNAVAILABLE and RESOURCE_EXHAUSTED are retried; ByteStream writes are not
// retried, and a ByteStream Read is retried this way only until its first
// message arrived.
//
// A ByteStream Read whose stream breaks later (the connection drops, the
// server answers UNAVAILABLE, INTERNAL or similar mid-stream) resumes
// where it stopped: a new Read with read_offset at the bytes already
// delivered, at most MaxResumes times per read (default 3; negative
// disables resuming). A stall (StallTimeout) and an answer that will not
// change (NOT_FOUND, INVALID_ARGUMENT, OUT_OF_RANGE, refused credentials)
// are not resumed.
type RetryConfig struct {
	MaxAttempts int
	BackoffBase time.Duration
	BackoffMax  time.Duration
	MaxResumes  int
}

// BreakerConfig configures the circuit breaker. After Failures consecutive
// failed call attempts (default 5; negative disables the breaker; a retried
// call counts each attempt) it opens: calls
// fail at once with blob.ErrUnavailable for CoolDown (default 10s). Then one
// call is let through as a probe; its success closes the breaker, its
// failure opens it for another CoolDown.
type BreakerConfig struct {
	Failures int
	CoolDown time.Duration
}

// ParallelConfig configures how Open reads large blobs: as parts of
// PartSize bytes, each a ByteStream Read with read_offset and read_limit,
// several in flight, delivered in order as one stream that is verified as
// a whole. Only identity reads are split (REAPI forbids read_limit on
// compressed-blobs), so a blob the tier reads as zstd is one stream.
//
// A read keeps at most Streams parts in flight: the one it delivers, read
// straight into the caller's buffer, and up to Streams-1 read ahead into
// buffers of PartSize bytes. Read-ahead buffers of all reads of the tier
// together hold at most Memory bytes; a part that finds no room is read
// when the caller reaches it (a read never waits for memory), so the tier
// holds at most Memory/PartSize read-ahead streams plus one stream per
// open reader.
type ParallelConfig struct {
	// Threshold: blobs of at least this many bytes (and more than one
	// part) are read in parts; default 8 MiB; negative disables parallel
	// reads.
	Threshold int64
	// PartSize is the bytes of one part; default 8 MiB, at least
	// MinPartSize.
	PartSize int64
	// Streams is the parts in flight per read; default 4; 1 disables
	// parallel reads.
	Streams int
	// Memory bounds the read-ahead buffers of the whole tier; default
	// 64 MiB; it must hold at least one part.
	Memory int64
}

// enabled reports whether large blobs are read in parts.
func (c ParallelConfig) enabled() bool { return c.Threshold >= 0 && c.Streams > 1 }

// String describes c with header values redacted.
func (c Config) String() string {
	keys := make([]string, 0, len(c.Headers))
	for k := range c.Headers {
		keys = append(keys, k+"=<redacted>")
	}
	sort.Strings(keys)
	return fmt.Sprintf("reapi.Config{Name:%q Endpoint:%q Instance:%q Headers:[%s] Compression:%q CallTimeout:%v StallTimeout:%v}",
		c.Name, c.Endpoint, c.Instance, strings.Join(keys, " "), c.Compression, c.CallTimeout, c.StallTimeout)
}

// GoString makes %#v redact header values too.
func (c Config) GoString() string { return c.String() }

// endpoint is a parsed Config.Endpoint.
type endpoint struct {
	hostport string
	tls      bool
}

func parseEndpoint(s string) (endpoint, error) {
	u, err := url.Parse(s)
	if err != nil {
		return endpoint{}, fmt.Errorf("reapi: endpoint %q: %v", s, err)
	}
	var ep endpoint
	switch u.Scheme {
	case "grpc":
	case "grpcs":
		ep.tls = true
	default:
		return endpoint{}, fmt.Errorf("reapi: endpoint %q: scheme must be grpc:// or grpcs://", s)
	}
	if u.User != nil {
		return endpoint{}, fmt.Errorf("reapi: endpoint must not carry credentials; use Config.Headers")
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return endpoint{}, fmt.Errorf("reapi: endpoint %q: only scheme://host:port is allowed (put the instance name in Config.Instance)", s)
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return endpoint{}, fmt.Errorf("reapi: endpoint %q: no host", s)
	}
	if port == "" {
		if !ep.tls {
			return endpoint{}, fmt.Errorf("reapi: endpoint %q: grpc:// needs a port", s)
		}
		port = "443"
	}
	ep.hostport = net.JoinHostPort(host, port)
	return ep, nil
}

func (c Config) withDefaults() (Config, endpoint, error) {
	if c.Endpoint == "" {
		return c, endpoint{}, fmt.Errorf("reapi: Config.Endpoint is empty")
	}
	ep, err := parseEndpoint(c.Endpoint)
	if err != nil {
		return c, ep, err
	}
	if !ep.tls && !c.TLS.isZero() {
		return c, ep, fmt.Errorf("reapi: TLS options given for plaintext endpoint %q (use grpcs://)", c.Endpoint)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return c, ep, fmt.Errorf("reapi: TLS.CertFile and TLS.KeyFile must be given together")
	}
	if strings.HasPrefix(c.Instance, "/") || strings.HasSuffix(c.Instance, "/") || strings.Contains(c.Instance, "//") {
		return c, ep, fmt.Errorf("reapi: instance name %q must not start or end with '/' or hold empty segments", c.Instance)
	}
	for _, seg := range strings.Split(c.Instance, "/") {
		switch seg {
		case "blobs", "uploads", "compressed-blobs", "actions", "actionResults", "operations", "capabilities":
			return c, ep, fmt.Errorf("reapi: instance name %q holds the reserved segment %q", c.Instance, seg)
		}
	}
	hdr := make(map[string]string, len(c.Headers))
	for k, v := range c.Headers {
		lk := strings.ToLower(k)
		if err := validHeader(lk, v); err != nil {
			return c, ep, err
		}
		if _, dup := hdr[lk]; dup {
			return c, ep, fmt.Errorf("reapi: header %q given twice (keys are case-insensitive)", lk)
		}
		hdr[lk] = v
	}
	c.Headers = hdr
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	if c.CallTimeout < 0 {
		return c, ep, fmt.Errorf("reapi: negative CallTimeout %v", c.CallTimeout)
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = DefaultStallTimeout
	}
	if c.StallTimeout < 0 {
		return c, ep, fmt.Errorf("reapi: negative StallTimeout %v", c.StallTimeout)
	}
	switch {
	case c.Retries.MaxResumes == 0:
		c.Retries.MaxResumes = DefaultMaxResumes
	case c.Retries.MaxResumes < 0:
		c.Retries.MaxResumes = 0
	}
	if c.Retries.MaxAttempts == 0 {
		c.Retries.MaxAttempts = DefaultMaxAttempts
	}
	if c.Retries.MaxAttempts < 0 {
		return c, ep, fmt.Errorf("reapi: negative Retries.MaxAttempts %d", c.Retries.MaxAttempts)
	}
	if c.Retries.BackoffBase <= 0 {
		c.Retries.BackoffBase = DefaultBackoffBase
	}
	if c.Retries.BackoffMax <= 0 {
		c.Retries.BackoffMax = DefaultBackoffMax
	}
	if c.Retries.BackoffMax < c.Retries.BackoffBase {
		c.Retries.BackoffMax = c.Retries.BackoffBase
	}
	switch c.Compression {
	case "":
		c.Compression = CompressionAuto
	case CompressionAuto, CompressionOff, CompressionZstd:
	default:
		return c, ep, fmt.Errorf("reapi: Compression %q: want %q, %q or %q", c.Compression, CompressionAuto, CompressionOff, CompressionZstd)
	}
	if c.BatchLimit < 0 {
		return c, ep, fmt.Errorf("reapi: negative BatchLimit %d", c.BatchLimit)
	}
	if c.BatchLimit > 0 && c.BatchLimit < minBatchLimit {
		return c, ep, fmt.Errorf("reapi: BatchLimit %d is below the minimum %d", c.BatchLimit, minBatchLimit)
	}
	if c.Breaker.Failures == 0 {
		c.Breaker.Failures = DefaultBreakerFailures
	}
	if c.Breaker.CoolDown <= 0 {
		c.Breaker.CoolDown = DefaultBreakerCoolDown
	}
	if err := c.Parallel.withDefaults(); err != nil {
		return c, ep, err
	}
	if c.ExistenceTTL == 0 {
		c.ExistenceTTL = DefaultExistenceTTL
	}
	if c.CacheEntries <= 0 {
		c.CacheEntries = DefaultCacheEntries
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, ep, nil
}

func (p *ParallelConfig) withDefaults() error {
	if p.Threshold == 0 {
		p.Threshold = DefaultParallelThreshold
	}
	if p.PartSize == 0 {
		p.PartSize = DefaultPartSize
	}
	if p.Streams == 0 {
		p.Streams = DefaultParallelStreams
	}
	if p.Memory == 0 {
		p.Memory = DefaultReadAheadMemory
	}
	switch {
	case p.PartSize < MinPartSize:
		return fmt.Errorf("reapi: Parallel.PartSize %d is below the minimum %d", p.PartSize, MinPartSize)
	case p.Streams < 0:
		return fmt.Errorf("reapi: negative Parallel.Streams %d", p.Streams)
	case p.Memory < 0:
		return fmt.Errorf("reapi: negative Parallel.Memory %d", p.Memory)
	case p.enabled() && p.Memory < p.PartSize:
		return fmt.Errorf("reapi: Parallel.Memory %d holds no part of Parallel.PartSize %d", p.Memory, p.PartSize)
	}
	return nil
}

// validHeader checks a lower-cased metadata key and its value. Errors name
// the key, never the value.
func validHeader(k, v string) error {
	if k == "" {
		return fmt.Errorf("reapi: empty header name")
	}
	for _, r := range k {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("reapi: header name %q: only a-z 0-9 - _ . are allowed", k)
		}
	}
	if strings.HasPrefix(k, "grpc-") || k == "content-type" || k == "te" || k == "user-agent" || k == ":authority" {
		return fmt.Errorf("reapi: header name %q is reserved by gRPC", k)
	}
	if strings.HasSuffix(k, "-bin") {
		return nil // binary values are base64-encoded by gRPC
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return fmt.Errorf("reapi: header %q: value must be printable ASCII", k)
		}
	}
	return nil
}
