// Package registry is Strata's client for OCI distribution registries: image
// references, tag resolution, manifests and verified blob streams. It is the
// only package that speaks HTTP to registries; it knows nothing of tiers and
// parses no documents (package manifest does).
//
// It is built on go-containerregistry: pkg/name for reference grammar,
// pkg/v1/remote/transport for the ping, basic auth and the bearer token
// dance (including re-authentication when a token expires: a 401 with a
// challenge makes ggcr fetch a new token and send the request again, once),
// and pkg/authn for credentials. On top it adds what the fetcher needs and
// ggcr's remote package does not offer: explicit per-call credentials,
// mirrors, a connect-time network policy, retries that honour Retry-After,
// resumable verified blob downloads, size caps, sentinel errors and metrics.
//
// # Errors
//
// Every error wraps a sentinel with the host and repository: ErrDenied
// (401/403), ErrNotFound (wraps blob.ErrNotFound), ErrUnreachable (wraps
// blob.ErrUnavailable), ErrTooLarge (wraps blob.ErrTooLarge),
// ErrDeniedAddress, ErrInvalidReference, ErrProtocol, or blob.ErrMismatch
// (as *blob.MismatchError). No credential appears in an error, a log line
// or a metric label.
//
// # Network policy
//
// Connections are checked in net.Dialer.Control, on the IP address actually
// dialed after DNS resolution, so a DNS name resolving to an internal
// address and a redirect (including a blob redirect to a storage host) are
// refused the same way. Denied by default: loopback, RFC 1918 and fc00::/7,
// link-local (169.254.0.0/16 with the 169.254.169.254 metadata service,
// fe80::/10), site-local fec0::/10, CGNAT 100.64.0.0/10, unspecified,
// multicast and reserved ranges, the IPv4-compatible ::/96, the local-use
// NAT64 prefix 64:ff9b:1::/48 as a whole, and the IPv4-mapped, NAT64
// (64:ff9b::/96) and 6to4 (2002::/16) forms of denied IPv4 addresses.
// Config.AllowCIDRs opens ranges. Errors never carry a URL's userinfo,
// query or fragment (a pre-signed storage URL is a bearer capability).
//
// Through an HTTP proxy (Config.Proxy, or HTTPS_PROXY/HTTP_PROXY/NO_PROXY
// from the environment) the client dials only the proxy, and that dial is
// checked like any other. The target host is checked by resolving it
// before the request (or CONNECT) is sent; the proxy then resolves it again
// itself, so a target whose DNS answer changes between the two lookups can
// only be stopped by the proxy's own policy.
//
// # Mirrors and credentials
//
// Config.Mirrors lists, per registry host, mirrors tried in order before
// the origin for content named by digest: Manifest of a digest reference,
// and Blob. A mirror's 404, 5xx, denial, transport error, timeout or bad
// content moves on to the next and counts as a fallback; content that fails
// verification is never returned as valid. Tags come from the origin only:
// Resolve, Head, CheckAccess and Manifest of a tag never ask a mirror, and
// neither does the question whether a repository holds a digest (a mirror
// may be stale, or hold what the origin repository never had). A mirror's
// bytes prove what a digest's content is, not that the origin repository
// holds it, so a caller asks for a digest only when the origin named it.
// The caller's authenticator is for the origin only: mirrors are accessed
// anonymously unless Mirror.Auth is set. Head and CheckAccess ask the
// origin with the caller's credentials; their success is an access proof.
//
// # Retries and resumes
//
// Idempotent requests are retried on 429, 5xx (except 501) and connection
// resets, with exponential backoff and full jitter, honouring Retry-After in
// seconds or as an HTTP-date, up to Config.MaxAttempts. A Retry-After
// longer than Config.MaxRetryAfter (10 s) is not waited for: the request
// fails at once with ErrUnreachable. A blob download that
// breaks part way is resumed with a Range request for the remainder
// ("bytes=N-END" when the size is known, which every registry accepts,
// else "bytes=N-"); a 206 must start at N, a 200 is accepted by skipping N
// bytes. A mirror that cannot resume hands over to the next endpoint.
//
// # Parallel reads
//
// With Config.Parallel.Streams above 1, a blob of known size larger than
// one part (8 MiB) is read in parts, each with its own Range request: the
// first request asks for the first part (a 206 must name exactly it and
// the blob's size; a 200 means the registry ignores Range, and the blob is
// read from that response as one stream), the part being delivered streams
// to the caller and the next Streams-1 are read ahead into buffers bounded
// by Config.Parallel.Memory for the whole client (package
// internal/readahead). Every part resumes on its own as above, a part read
// ahead that fails is read again from where it stopped when the caller
// reaches it, and the blob is verified as one stream, in order. It pays
// where one connection is bound by latency or a per-connection limit; on
// loopback one stream is as fast (BenchmarkParallelBlob).
//
// # Progress
//
// Every response body (ping, token, manifest, blob, error) must keep
// coming: no byte for Config.IdleTimeout (30 s), or less than
// Config.MinRate (1 KiB/s) over each Config.MinRateWindow (30 s) of
// waiting, fails it with ErrStalled (an ErrUnreachable) naming the host,
// the request and what it did. Only time spent waiting for the network
// counts. A stalled blob download is resumed like a broken one. The /v2/
// ping's body is read at most 64 KiB. These rules bound waiting without
// progress; the caller's context bounds a whole call.
package registry
