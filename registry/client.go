package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/singleflight"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/readahead"
	"github.com/strata-oci/strata/manifest"
)

// ManifestMediaTypes are the manifest and index media types the client asks
// for (Accept), in order of preference. Schema 1 is not asked for; a
// registry that sends it anyway has its media type passed through for the
// manifest package to reject.
var ManifestMediaTypes = []types.MediaType{
	types.OCIImageIndex,
	types.OCIManifestSchema1,
	types.DockerManifestList,
	types.DockerManifestSchema2,
}

var acceptHeader = func() string {
	s := make([]string, len(ManifestMediaTypes))
	for i, mt := range ManifestMediaTypes {
		s[i] = string(mt)
	}
	return strings.Join(s, ", ")
}()

// maxTransports bounds the cache of authenticated transports.
const maxTransports = 1024

// maxBadMarks bounds the memory of (mirror, digest) pairs that served bad
// content.
const maxBadMarks = 4096

// Client reads manifests and blobs from OCI registries, through configured
// mirrors, under a network policy, with retries and resumable downloads. It
// is the only part of Strata that speaks HTTP to registries; HTTP statuses
// become the package's sentinel errors here.
//
// Credentials are passed to every call as an authn.Authenticator (nil means
// anonymous); the client never looks them up, never logs them and never puts
// them in errors or metric labels. Authenticated transports (ggcr's token
// dance and basic auth) are cached per (endpoint, repository, credential
// hash), so a token is reused across calls and refreshed by ggcr when the
// registry rejects it (once per request).
//
// A Client is safe for concurrent use.
type Client struct {
	cfg     Config
	log     *slog.Logger
	policy  *netPolicy
	m       *metrics
	base    http.RoundTripper
	mirrors map[string][]endpoint

	mu  sync.Mutex
	rts map[string]http.RoundTripper
	sf  singleflight.Group

	badMu sync.Mutex
	bad   map[string]struct{}

	// readAhead bounds the read-ahead buffers of parallel blob reads.
	readAhead *readahead.Budget
}

// New returns a Client for cfg. It fails on an invalid configuration (a bad
// CIDR or mirror endpoint) or when the metrics cannot be registered.
func New(cfg Config) (*Client, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	policy, err := newNetPolicy(cfg.AllowCIDRs)
	if err != nil {
		return nil, err
	}
	hosts, err := metricHosts(&cfg)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Metrics, hosts)
	if err != nil {
		return nil, fmt.Errorf("registry: registering metrics: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{cfg: cfg, log: log, policy: policy, m: m, rts: map[string]http.RoundTripper{}, bad: map[string]struct{}{}, mirrors: map[string][]endpoint{},
		readAhead: readahead.NewBudget(cfg.Parallel.Memory, cfg.Parallel.PartSize)}
	for host, ms := range cfg.Mirrors {
		if host == "docker.io" {
			host = name.DefaultRegistry
		}
		for i, mr := range ms {
			if !registryRE.MatchString(mr.Endpoint) {
				return nil, fmt.Errorf("registry: Config.Mirrors[%q][%d]: bad endpoint %q (want host[:port])", host, i, mr.Endpoint)
			}
			var opts []name.Option
			if mr.Insecure {
				opts = append(opts, name.Insecure)
			}
			reg, err := name.NewRegistry(mr.Endpoint, opts...)
			if err != nil {
				return nil, fmt.Errorf("registry: Config.Mirrors[%q][%d]: %w", host, i, err)
			}
			to := mr.Timeout
			if to <= 0 {
				to = DefaultMirrorTimeout
			}
			c.mirrors[host] = append(c.mirrors[host], endpoint{reg: reg, auth: mr.Auth, mirror: true, timeout: to})
		}
	}
	dialer := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second, Control: policy.control}
	ht := &http.Transport{
		Proxy:                 policy.proxyFunc(cfg.Proxy, net.DefaultResolver),
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		// Bytes must arrive exactly as the registry stores them.
		DisableCompression: true,
	}
	pt := &progressTransport{inner: ht, cfg: &c.cfg, m: m}
	c.base = transport.NewUserAgent(&retryTransport{inner: &metricsTransport{inner: pt, m: m}, cfg: &c.cfg, m: m, now: time.Now}, cfg.UserAgent)
	return c, nil
}

// endpoint is one place to ask: a mirror or the origin registry.
type endpoint struct {
	reg     name.Registry
	auth    authn.Authenticator
	mirror  bool
	timeout time.Duration
}

func (e endpoint) host() string { return e.reg.RegistryStr() }

func (c *Client) endpoints(repo Repository, auth authn.Authenticator) []endpoint {
	ms := c.mirrors[repo.Registry()]
	out := make([]endpoint, 0, len(ms)+1)
	out = append(out, ms...)
	return append(out, endpoint{reg: repo.repo.Registry, auth: auth})
}

// roundTripper returns an authenticated transport for ep and repo, from the
// cache or by pinging the registry and, for token auth, fetching a token.
func (c *Client) roundTripper(ctx context.Context, ep endpoint, repo Repository) (http.RoundTripper, error) {
	auth := ep.auth
	if auth == nil {
		auth = authn.Anonymous
	}
	cfg, err := authn.Authorization(ctx, auth)
	if err != nil {
		return nil, fmt.Errorf("the authenticator failed: %w", err)
	}
	raw, _ := json.Marshal(cfg)
	sum := sha256.Sum256(raw)
	key := ep.reg.Scheme() + "://" + ep.host() + "/" + repo.Name() + "|" + hex.EncodeToString(sum[:])
	c.mu.Lock()
	rt, ok := c.rts[key]
	c.mu.Unlock()
	if ok {
		return rt, nil
	}
	// Concurrent first calls for one key share one ping and token fetch.
	// The work runs on the context of the caller that started it; if that
	// caller gives up, the others start over rather than fail with it.
	scope := ep.reg.Repo(repo.Name()).Scope(transport.PullScope)
	for attempt := 1; ; attempt++ {
		ch := c.sf.DoChan(key, func() (any, error) {
			rt, err := transport.NewWithContext(ctx, ep.reg, auth, c.base, []string{scope})
			if err != nil {
				return nil, err
			}
			c.mu.Lock()
			if len(c.rts) >= maxTransports {
				for k := range c.rts {
					delete(c.rts, k)
					break
				}
			}
			c.rts[key] = rt
			c.mu.Unlock()
			return rt, nil
		})
		select {
		case res := <-ch:
			if res.Err != nil {
				if attempt < 3 && ctx.Err() == nil && (errors.Is(res.Err, context.Canceled) || errors.Is(res.Err, context.DeadlineExceeded)) {
					continue // the leader's context ended, not ours
				}
				return nil, res.Err
			}
			return res.Val.(http.RoundTripper), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// send issues one request for /v2/<repo>/<kind>/<ident> at ep. Status codes
// are left to the caller; transport failures are classified.
func (c *Client) send(ctx context.Context, ep endpoint, repo Repository, method, kind, ident string, hdr http.Header) (*http.Response, error) {
	op := method + " " + strings.TrimSuffix(kind, "s") + " " + ident
	rt, err := c.roundTripper(ctx, ep, repo)
	if err != nil {
		return nil, transportError(op, ep.host(), repo.Name(), err)
	}
	u := url.URL{Scheme: ep.reg.Scheme(), Host: ep.host(), Path: "/v2/" + repo.Name() + "/" + kind + "/" + ident}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%s %s/%s: %w", op, ep.host(), repo.Name(), err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	hc := &http.Client{Transport: rt, CheckRedirect: checkRedirect}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, transportError(op, ep.host(), repo.Name(), err)
	}
	return resp, nil
}

// checkRedirect follows at most 10 redirects and never from https to http.
// Where a redirect may lead is decided by the network policy at dial time.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return fmt.Errorf("%w: stopped after 10 redirects", ErrProtocol)
	}
	if via[0].URL.Scheme == "https" && req.URL.Scheme != "https" {
		return fmt.Errorf("%w: refusing redirect from https to %s://%s", ErrProtocol, req.URL.Scheme, req.URL.Host)
	}
	return nil
}

// each runs fn against the mirrors of repo's registry in order and then the
// origin, returning the first success. A mirror's failure of any kind moves
// on (and is counted); the origin's error, or the caller's cancellation, is
// returned. Each mirror attempt runs under the mirror's timeout.
func (c *Client) each(ctx context.Context, repo Repository, auth authn.Authenticator, fn func(ctx context.Context, ep endpoint) error) error {
	for _, ep := range c.endpoints(repo, auth) {
		if !ep.mirror {
			return fn(ctx, ep)
		}
		actx, cancel := context.WithTimeout(ctx, ep.timeout)
		err := fn(actx, ep)
		timedOut := ctx.Err() == nil && actx.Err() != nil
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		c.fallback(repo, ep, err, timedOut)
	}
	panic("unreachable: the origin is always the last endpoint")
}

func (c *Client) fallback(repo Repository, ep endpoint, err error, timedOut bool) {
	reason := "error"
	switch {
	case timedOut:
		reason = "timeout"
	case errors.Is(err, ErrNotFound):
		reason = "not_found"
	case errors.Is(err, ErrDenied):
		reason = "denied"
	case errors.Is(err, blob.ErrMismatch):
		reason = "mismatch"
	case errors.Is(err, ErrTooLarge):
		reason = "too_large"
	case errors.Is(err, ErrDeniedAddress):
		reason = "policy"
	case errors.Is(err, ErrUnreachable):
		reason = "unreachable"
	}
	c.m.fallbacks.WithLabelValues(c.m.host(repo.Registry()), c.m.host(ep.host()), reason).Inc()
	level := slog.LevelInfo
	if reason == "mismatch" {
		level = slog.LevelWarn
	}
	c.log.Log(context.Background(), level, "registry: a mirror failed; trying the next source", "registry", repo.Registry(), "mirror", ep.host(), "reason", reason)
}

func (c *Client) markBad(ep endpoint, d blob.Digest) {
	c.badMu.Lock()
	defer c.badMu.Unlock()
	if len(c.bad) >= maxBadMarks {
		clear(c.bad)
	}
	c.bad[ep.host()+"|"+string(d)] = struct{}{}
}

func (c *Client) isBad(ep endpoint, d blob.Digest) bool {
	c.badMu.Lock()
	defer c.badMu.Unlock()
	_, ok := c.bad[ep.host()+"|"+string(d)]
	return ok
}

func checkRef(ref Reference) error {
	if !ref.repo.valid() || ref.Identifier() == "" {
		return fmt.Errorf("%w: zero Reference (use ParseReference)", ErrInvalidReference)
	}
	return nil
}

func mediaType(h http.Header) types.MediaType {
	ct := strings.TrimSpace(h.Get("Content-Type"))
	if mt, _, err := mime.ParseMediaType(ct); err == nil {
		return types.MediaType(mt)
	}
	return types.MediaType(ct)
}

// Resolve returns the descriptor of the manifest or index ref names. It
// asks the origin registry only, with auth, never a mirror: what a tag
// names, and whether a repository holds a digest, are the origin's to say
// (a mirror may be stale, or hold what the origin repository never had).
// It asks with HEAD and falls back to GET when the registry omits
// Docker-Content-Digest or Content-Length. For a digest reference the
// answer must carry that digest. It is Head under another name.
func (c *Client) Resolve(ctx context.Context, ref Reference, auth authn.Authenticator) (manifest.Descriptor, error) {
	return c.Head(ctx, ref, auth)
}

var errNeedGet = errors.New("HEAD did not describe the manifest")

func (c *Client) head(ctx context.Context, ep endpoint, ref Reference) (manifest.Descriptor, error) {
	host, repo := ep.host(), ref.repo.Name()
	resp, err := c.send(ctx, ep, ref.repo, http.MethodHead, "manifests", ref.Identifier(), http.Header{"Accept": {acceptHeader}})
	if err != nil {
		return manifest.Descriptor{}, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return manifest.Descriptor{}, statusError("HEAD manifest "+ref.Identifier(), host, repo, resp.StatusCode)
	}
	d, err := blob.ParseDigest(resp.Header.Get("Docker-Content-Digest"))
	if err != nil || resp.ContentLength < 0 {
		return manifest.Descriptor{}, errNeedGet
	}
	if ref.digest != "" && d != ref.digest {
		return manifest.Descriptor{}, fmt.Errorf("HEAD manifest %s/%s: %w", host, repo, &blob.MismatchError{Want: ref.digest, WantSize: -1, Got: d, GotSize: resp.ContentLength})
	}
	if resp.ContentLength > c.cfg.MaxManifestSize {
		return manifest.Descriptor{}, fmt.Errorf("HEAD manifest %s %s/%s: %w: %d bytes (cap %d)", d, host, repo, ErrTooLarge, resp.ContentLength, c.cfg.MaxManifestSize)
	}
	return manifest.Descriptor{Digest: d, Size: resp.ContentLength, MediaType: mediaType(resp.Header)}, nil
}

// Manifest fetches the manifest or index ref names and returns its bytes
// and descriptor. A digest reference is tried at the mirrors, then the
// origin; a tag reference is asked of the origin only (as Resolve). The
// bytes are capped (Config.MaxManifestSize; ErrTooLarge), hashed, and
// checked against the reference's digest and the registry's
// Docker-Content-Digest; a mismatch is a *blob.MismatchError. The media
// type is the Content-Type.
//
// A mirror's bytes for a digest prove what the digest's content is, not
// that the origin repository holds it: ask for a digest only when the
// origin named it (Resolve, Head, or a document whose own digest the origin
// named).
func (c *Client) Manifest(ctx context.Context, ref Reference, auth authn.Authenticator) ([]byte, manifest.Descriptor, error) {
	if err := checkRef(ref); err != nil {
		return nil, manifest.Descriptor{}, err
	}
	if ref.digest == "" {
		return c.getManifest(ctx, endpoint{reg: ref.repo.repo.Registry, auth: auth}, ref)
	}
	var (
		body []byte
		desc manifest.Descriptor
	)
	err := c.each(ctx, ref.repo, auth, func(ctx context.Context, ep endpoint) error {
		b, d, err := c.getManifest(ctx, ep, ref)
		body, desc = b, d
		return err
	})
	if err != nil {
		return nil, manifest.Descriptor{}, err
	}
	return body, desc, nil
}

func (c *Client) getManifest(ctx context.Context, ep endpoint, ref Reference) ([]byte, manifest.Descriptor, error) {
	host, repo := ep.host(), ref.repo.Name()
	op := "GET manifest " + ref.Identifier()
	resp, err := c.send(ctx, ep, ref.repo, http.MethodGet, "manifests", ref.Identifier(), http.Header{"Accept": {acceptHeader}})
	if err != nil {
		return nil, manifest.Descriptor{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, manifest.Descriptor{}, statusError(op, host, repo, resp.StatusCode)
	}
	limit := c.cfg.MaxManifestSize
	if resp.ContentLength > limit {
		return nil, manifest.Descriptor{}, fmt.Errorf("%s %s/%s: %w: %d bytes (cap %d)", op, host, repo, ErrTooLarge, resp.ContentLength, limit)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, manifest.Descriptor{}, transportError(op, host, repo, err)
	}
	if int64(len(b)) > limit {
		return nil, manifest.Descriptor{}, fmt.Errorf("%s %s/%s: %w: more than %d bytes", op, host, repo, ErrTooLarge, limit)
	}
	got := blob.FromBytes(b)
	if ref.digest != "" && got != ref.digest {
		return nil, manifest.Descriptor{}, fmt.Errorf("%s %s/%s: %w", op, host, repo, &blob.MismatchError{Want: ref.digest, WantSize: -1, Got: got, GotSize: int64(len(b))})
	}
	if hd, err := blob.ParseDigest(resp.Header.Get("Docker-Content-Digest")); err == nil && hd != got {
		return nil, manifest.Descriptor{}, fmt.Errorf("%s %s/%s: Docker-Content-Digest disagrees with the body: %w", op, host, repo, &blob.MismatchError{Want: hd, WantSize: -1, Got: got, GotSize: int64(len(b))})
	}
	return b, manifest.Descriptor{Digest: got, Size: int64(len(b)), MediaType: mediaType(resp.Header)}, nil
}

// Head resolves ref at the origin registry only, with the caller's
// credentials, never through a mirror. A success is therefore also a proof
// of access (as CheckAccess), and the fetcher can refresh a tag and its
// access proof with one request. Errors are those of CheckAccess.
func (c *Client) Head(ctx context.Context, ref Reference, auth authn.Authenticator) (manifest.Descriptor, error) {
	if err := checkRef(ref); err != nil {
		return manifest.Descriptor{}, err
	}
	ep := endpoint{reg: ref.repo.repo.Registry, auth: auth}
	d, err := c.head(ctx, ep, ref)
	if errors.Is(err, errNeedGet) {
		_, d, err = c.getManifest(ctx, ep, ref)
	}
	return d, err
}

// CheckAccess proves that auth may pull ref's repository at the origin
// registry (never a mirror) with one manifest HEAD. It returns nil on
// success, an error wrapping ErrDenied when the registry refuses the
// credentials (401/403), ErrNotFound when the manifest or repository does
// not exist, and ErrUnreachable when the registry cannot be reached.
func (c *Client) CheckAccess(ctx context.Context, ref Reference, auth authn.Authenticator) error {
	if err := checkRef(ref); err != nil {
		return err
	}
	_, err := c.head(ctx, endpoint{reg: ref.repo.repo.Registry, auth: auth}, ref)
	if errors.Is(err, errNeedGet) {
		return nil
	}
	return err
}

// Blob opens blob d (of size bytes; -1 if unknown) in repo, through the
// mirrors, then the origin. The returned stream is verified: it returns
// io.EOF only after exactly size bytes hashing to d have been read, and
// otherwise a *blob.MismatchError (wrapped with the host). A download that
// breaks is resumed with a Range request against the same endpoint, or, if
// a mirror cannot resume, against the next mirror or the origin (up to
// Config.MaxResumes times); the whole stream, across resumes, is verified.
// A mirror that serves bad bytes is remembered and skipped for that digest
// afterwards, so the caller's retry reaches the next mirror or the origin.
//
// The caller must Close the stream. The stream is bound to ctx: cancelling
// ctx aborts reads.
func (c *Client) Blob(ctx context.Context, repo Repository, d blob.Digest, size int64, auth authn.Authenticator) (io.ReadCloser, error) {
	if !repo.valid() {
		return nil, fmt.Errorf("%w: zero Repository (use ParseRepository)", ErrInvalidReference)
	}
	if err := blob.ValidateDigest(d); err != nil {
		return nil, fmt.Errorf("blob %s: %w", repo, err)
	}
	if c.cfg.MaxBlob > 0 && size > c.cfg.MaxBlob {
		return nil, fmt.Errorf("blob %s in %s: %w: %d bytes (cap %d)", d, repo, ErrTooLarge, size, c.cfg.MaxBlob)
	}
	eps := c.endpoints(repo, auth)
	for i, ep := range eps {
		if ep.mirror && c.isBad(ep, d) {
			c.m.fallbacks.WithLabelValues(c.m.host(repo.Registry()), c.m.host(ep.host()), "bad_content").Inc()
			continue
		}
		rc, timedOut, err := c.openBlob(ctx, ep, eps[i+1:], repo, d, size)
		if err == nil {
			return rc, nil
		}
		if !ep.mirror || ctx.Err() != nil {
			return nil, err
		}
		c.fallback(repo, ep, err, timedOut)
	}
	panic("unreachable: the origin is always the last endpoint")
}

func (c *Client) openBlob(ctx context.Context, ep endpoint, next []endpoint, repo Repository, d blob.Digest, size int64) (io.ReadCloser, bool, error) {
	host, rname := ep.host(), repo.Name()
	actx, cancel := context.WithCancel(ctx)
	var timer *time.Timer
	if ep.timeout > 0 {
		timer = time.AfterFunc(ep.timeout, cancel)
	}
	// A blob of more than one part is asked for by its first part: a 206
	// starts a parallel read, a 200 (Range ignored) is read as one stream.
	pc := c.cfg.Parallel
	var hdr http.Header
	if pc.enabled() && size > pc.PartSize && (c.cfg.MaxBlob <= 0 || size <= c.cfg.MaxBlob) {
		hdr = http.Header{"Range": {"bytes=0-" + strconv.FormatInt(pc.PartSize-1, 10)}}
	}
	resp, err := c.send(actx, ep, repo, http.MethodGet, "blobs", string(d), hdr)
	inTime := timer == nil || timer.Stop()
	if err != nil {
		cancel()
		return nil, !inTime && ctx.Err() == nil, err
	}
	if !inTime {
		resp.Body.Close()
		cancel()
		return nil, true, fmt.Errorf("GET blob %s %s/%s: %w: mirror timed out after %s", d, host, rname, ErrUnreachable, ep.timeout)
	}
	fail := func(err error) (io.ReadCloser, bool, error) {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		cancel()
		return nil, false, err
	}
	if hdr != nil && resp.StatusCode == http.StatusPartialContent {
		start, end, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || start != 0 || end != pc.PartSize-1 || total != size {
			return fail(fmt.Errorf("GET blob %s %s/%s: %w: asked for %s, got Content-Range %q", d, host, rname, ErrProtocol, hdr.Get("Range"), clip(resp.Header.Get("Content-Range"))))
		}
		return c.parallelBlob(actx, cancel, ep, next, repo, d, size, resp.Body), false, nil
	}
	if resp.StatusCode != http.StatusOK {
		return fail(blobStatusError("GET blob "+string(d), host, rname, resp))
	}
	total := size
	if size >= 0 && resp.ContentLength >= 0 && resp.ContentLength != size {
		return fail(fmt.Errorf("GET blob %s/%s: Content-Length disagrees: %w", host, rname, &blob.MismatchError{Want: d, WantSize: size, GotSize: resp.ContentLength}))
	}
	if total < 0 {
		total = resp.ContentLength
	}
	if c.cfg.MaxBlob > 0 && total > c.cfg.MaxBlob {
		return fail(fmt.Errorf("GET blob %s %s/%s: %w: %d bytes (cap %d)", d, host, rname, ErrTooLarge, total, c.cfg.MaxBlob))
	}
	br := &blobReader{c: c, ctx: actx, cancel: cancel, ep: ep, next: next, repo: repo, d: d, total: total, size: total, limit: c.cfg.MaxBlob, body: resp.Body}
	return c.verified(br, ep, repo, d, total), false, nil
}

// verified is src, the download of d (size bytes, -1 if unknown) from ep,
// verified as one stream; a mirror whose bytes do not match is remembered
// as bad for d.
func (c *Client) verified(src io.ReadCloser, ep endpoint, repo Repository, d blob.Digest, size int64) io.ReadCloser {
	var onMismatch func(error)
	if ep.mirror {
		onMismatch = func(error) { c.markBad(ep, d) }
	}
	return &blobStream{v: blob.NewVerifier(src, d, size, onMismatch), host: ep.host(), repo: repo.Name()}
}

// parallelBlob is the verified stream of d (size bytes) read in parts
// (see ParallelConfig) from ep, whose first part is the body of the 206
// just received. Every part resumes on its own (within MaxResumes), at ep
// and then the endpoints after it as a whole-blob read does.
func (c *Client) parallelBlob(ctx context.Context, cancel context.CancelFunc, ep endpoint, next []endpoint, repo Repository, d blob.Digest, size int64, first io.ReadCloser) io.ReadCloser {
	parts := c.m.parts.WithLabelValues(c.m.host(ep.host()))
	parts.Inc()
	part := func(ctx context.Context, off, end int64, body io.ReadCloser) *blobReader {
		pctx, pcancel := context.WithCancel(ctx)
		return &blobReader{c: c, ctx: pctx, cancel: pcancel, ep: ep, next: next, repo: repo, d: d,
			total: end, size: size, ranged: true, off: off, body: body}
	}
	open := func(ctx context.Context, off, end int64) (io.ReadCloser, error) {
		parts.Inc()
		b := part(ctx, off, end, http.NoBody)
		if err := b.atEndpoints(b.request, func() bool { return true }); err != nil {
			b.cancel()
			return nil, err
		}
		return b, nil
	}
	r := readahead.New(ctx, readahead.Config{
		Size:     size,
		PartSize: c.cfg.Parallel.PartSize,
		Streams:  c.cfg.Parallel.Streams,
		Budget:   c.readAhead,
		Open:     open,
		Closed:   errors.New("registry: read after Close"),
	}, part(ctx, 0, c.cfg.Parallel.PartSize, first))
	return c.verified(&closeFunc{r: r, close: func() error { err := r.Close(); cancel(); return err }}, ep, repo, d, size)
}

// closeFunc is a reader with a Close of its own.
type closeFunc struct {
	r     io.Reader
	close func() error
}

func (c *closeFunc) Read(p []byte) (int, error) { return c.r.Read(p) }
func (c *closeFunc) Close() error               { return c.close() }

// blobStream adds the endpoint to the verifier's errors.
type blobStream struct {
	v          *blob.Verifier
	host, repo string
}

func (s *blobStream) Read(p []byte) (int, error) {
	n, err := s.v.Read(p)
	if err != nil && err != io.EOF {
		var me *blob.MismatchError
		if errors.As(err, &me) {
			err = fmt.Errorf("blob from %s/%s: %w", s.host, s.repo, err)
		}
	}
	return n, err
}

func (s *blobStream) Close() error { return s.v.Close() }

// VerifiedBlob implements blob.VerifiedReader.
func (s *blobStream) VerifiedBlob() (blob.Digest, int64) { return s.v.VerifiedBlob() }

// PrefixState implements blob.PrefixHasher: a stack reading this stream
// need not hash it again.
func (s *blobStream) PrefixState() (hash.Hash, int64) { return s.v.PrefixState() }
