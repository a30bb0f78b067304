package reapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/client"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/readahead"
)

// Batch request sizing.
const (
	// batchOverhead is what a batch request needs beyond the blob bytes:
	// the instance name, the digest and protobuf framing. It is generous;
	// the exact request size is checked before sending.
	batchOverhead = 1024
	// minBatchLimit is the smallest BatchLimit accepted.
	minBatchLimit = 4 * batchOverhead
	// chunkSize is the data size of one ByteStream WriteRequest (the
	// protocol allows up to 2 MiB).
	chunkSize = 1 << 20
	// maxRecvMsg bounds one message received from the server.
	maxRecvMsg = 16 << 20
	// maxBatchBlob bounds the blobs Put buffers in memory for a batch
	// upload, whatever batch size the server allows; larger ones stream.
	maxBatchBlob = client.DefaultMaxBatchSize
)

// Tier is a blob.Tier over a Remote Execution API v2 server's CAS and
// ActionCache. It is safe for concurrent use. See the package comment for
// the layout and docs/reapi.md for the exact wire format.
type Tier struct {
	cfg  Config
	conn *grpc.ClientConn
	cas  repb.ContentAddressableStorageClient
	ac   repb.ActionCacheClient
	bs   bspb.ByteStreamClient
	capc repb.CapabilitiesClient

	breaker        *breaker
	retries        atomic.Uint64
	resumes        atomic.Uint64
	repairsRefused atomic.Uint64
	closed         atomic.Bool

	capsMu sync.Mutex
	caps   *serverCaps // nil until fetched

	// sizes maps a blob's sha256 hex to what the tier knows of it;
	// exists holds blobs recently seen present (hex -> expiry); corrupt
	// holds blobs the server served corrupt, until a Put re-uploads them.
	sizes   *cache[string, sizeInfo]
	exists  *cache[string, time.Time]
	corrupt *cache[string, struct{}]
	// kinds remembers whether a blob's content compresses (hex -> true),
	// learnt from its first bytes on Put or on a read; see compressible.
	kinds *cache[string, bool]

	// readAhead bounds (and recycles) the read-ahead buffers of parallel
	// reads.
	readAhead *readahead.Budget
}

// sizeInfo is what the tier knows of a blob's size.
type sizeInfo struct {
	size int64
	// indexed: the size index entry for the blob is known to exist.
	indexed bool
}

// serverCaps is what the tier uses of the server's Capabilities.
type serverCaps struct {
	batchLimit int64 // max bytes of one batch request
	zstdStream bool  // ByteStream uses compressed-blobs/zstd
	zstdBatch  bool  // BatchUpdateBlobs sends ZSTD
	acWritable bool  // UpdateActionResult is allowed
}

// New returns a tier for cfg. New fails on bad configuration, and when the
// server answers Capabilities with a refusal (unknown instance, rejected
// credentials: INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED,
// UNAUTHENTICATED, UNIMPLEMENTED, FAILED_PRECONDITION) or with
// capabilities the tier cannot use (no sha256). It does not fail when the
// server is unreachable: the tier then reports blob.ErrUnavailable until
// the server is back, and fetches the capabilities then.
func New(ctx context.Context, cfg Config) (*Tier, error) {
	cfg, ep, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if ep.tls {
		tc, err := tlsConfig(cfg.TLS)
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(tc)
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: cfg.CallTimeout,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsg)),
		grpc.WithUserAgent("strata-reapi"),
	}
	if len(cfg.Headers) > 0 {
		md := metadata.New(cfg.Headers)
		opts = append(opts,
			grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
				return invoker(withHeaders(ctx, md), method, req, reply, cc, o...)
			}),
			grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, o ...grpc.CallOption) (grpc.ClientStream, error) {
				return streamer(withHeaders(ctx, md), desc, cc, method, o...)
			}))
	}
	opts = append(opts, cfg.DialOptions...)
	conn, err := grpc.NewClient(ep.hostport, opts...)
	if err != nil {
		return nil, fmt.Errorf("reapi %q: dial %s: %w", cfg.Name, ep.hostport, err)
	}
	t := &Tier{
		cfg:     cfg,
		conn:    conn,
		cas:     repb.NewContentAddressableStorageClient(conn),
		ac:      repb.NewActionCacheClient(conn),
		bs:      bspb.NewByteStreamClient(conn),
		capc:    repb.NewCapabilitiesClient(conn),
		breaker: newBreaker(cfg.Breaker, cfg.Now, cfg.Logger, cfg.Name),
		sizes:   newCache[string, sizeInfo](cfg.CacheEntries),
		exists:  newCache[string, time.Time](cfg.CacheEntries),
		corrupt: newCache[string, struct{}](cfg.CacheEntries),
		kinds:   newCache[string, bool](cfg.CacheEntries),

		readAhead: readahead.NewBudget(cfg.Parallel.Memory, cfg.Parallel.PartSize),
	}
	// Learn the capabilities now if the server is there. A server that
	// refuses the instance or the credentials, or cannot serve sha256, is
	// a configuration error; an unreachable one is not.
	if _, err := t.capabilities(ctx); err != nil && ctx.Err() == nil {
		var ce *capsError
		if errors.As(err, &ce) && ce.definitive() {
			conn.Close()
			return nil, err
		}
	}
	return t, nil
}

// capsError is a failed Capabilities call or an unusable answer.
type capsError struct {
	code codes.Code // codes.OK for an unusable answer
	err  error
}

func (e *capsError) Error() string { return e.err.Error() }
func (e *capsError) Unwrap() error { return e.err }

// definitive reports whether the failure is the configuration's, not the
// network's: retrying later will not help.
func (e *capsError) definitive() bool {
	switch e.code {
	case codes.OK, codes.InvalidArgument, codes.NotFound, codes.Unimplemented,
		codes.PermissionDenied, codes.Unauthenticated, codes.FailedPrecondition:
		return true
	}
	return false
}

func withHeaders(ctx context.Context, md metadata.MD) context.Context {
	if out, ok := metadata.FromOutgoingContext(ctx); ok {
		return metadata.NewOutgoingContext(ctx, metadata.Join(out, md))
	}
	return metadata.NewOutgoingContext(ctx, md)
}

func tlsConfig(c TLSConfig) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName, InsecureSkipVerify: c.InsecureSkipVerify}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reapi: TLS.CAFile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("reapi: TLS.CAFile %s holds no PEM certificate", c.CAFile)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("reapi: TLS client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// capabilities returns the server's capabilities, fetching them on first
// use (and again after a failed fetch).
func (t *Tier) capabilities(ctx context.Context) (*serverCaps, error) {
	t.capsMu.Lock()
	defer t.capsMu.Unlock()
	if t.caps != nil {
		return t.caps, nil
	}
	var resp *repb.ServerCapabilities
	err := t.unary(ctx, func(ctx context.Context, o ...grpc.CallOption) error {
		var err error
		resp, err = t.capc.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{InstanceName: t.cfg.Instance}, o...)
		return err
	})
	if err != nil {
		code := status.Code(err)
		if code == codes.OK {
			code = codes.Unavailable // not a server answer (breaker, closed)
		}
		return nil, &capsError{code: code, err: t.convert(ctx, "capabilities of", t.cfg.Endpoint, err)}
	}
	caps, err := t.parseCaps(resp)
	if err != nil {
		return nil, &capsError{code: codes.OK, err: fmt.Errorf("reapi %q: server %s: %w: %v", t.cfg.Name, t.cfg.Endpoint, blob.ErrUnavailable, err)}
	}
	t.caps = caps
	return caps, nil
}

func (t *Tier) parseCaps(resp *repb.ServerCapabilities) (*serverCaps, error) {
	cc := resp.GetCacheCapabilities()
	if cc == nil {
		return nil, fmt.Errorf("no cache capabilities (not a REAPI cache)")
	}
	if fns := cc.GetDigestFunctions(); len(fns) > 0 && !slices.Contains(fns, repb.DigestFunction_SHA256) {
		return nil, fmt.Errorf("server does not offer sha256 digests (offers %v)", fns)
	}
	c := &serverCaps{batchLimit: client.DefaultMaxBatchSize}
	if m := cc.GetMaxBatchTotalSizeBytes(); m > 0 {
		c.batchLimit = m
	}
	if t.cfg.BatchLimit > 0 && t.cfg.BatchLimit < c.batchLimit {
		c.batchLimit = t.cfg.BatchLimit
	}
	switch t.cfg.Compression {
	case CompressionZstd:
		c.zstdStream, c.zstdBatch = true, true
	case CompressionAuto:
		c.zstdStream = slices.Contains(cc.GetSupportedCompressors(), repb.Compressor_ZSTD)
		c.zstdBatch = slices.Contains(cc.GetSupportedBatchUpdateCompressors(), repb.Compressor_ZSTD)
	}
	// An absent ActionCacheUpdateCapabilities means updates are allowed
	// (servers older than the field); an explicit false forbids them.
	c.acWritable = cc.ActionCacheUpdateCapabilities == nil || cc.ActionCacheUpdateCapabilities.GetUpdateEnabled()
	return c, nil
}

// Name returns the tier's name.
func (t *Tier) Name() string { return t.cfg.Name }

// Usage returns blob.ErrUnsupported: REAPI reports no occupancy.
func (t *Tier) Usage(ctx context.Context) (blob.Usage, error) {
	return blob.Usage{}, fmt.Errorf("reapi %q: usage: %w (REAPI servers do not report occupancy)", t.cfg.Name, blob.ErrUnsupported)
}

// Walk returns blob.ErrUnsupported: REAPI cannot list a CAS.
func (t *Tier) Walk(ctx context.Context, fn func(blob.Info) error) error {
	return fmt.Errorf("reapi %q: walk: %w (REAPI cannot list a CAS)", t.cfg.Name, blob.ErrUnsupported)
}

// Delete returns blob.ErrUnsupported: REAPI has no delete; the server
// evicts by its own policy. The tier forgets what it cached about d.
func (t *Tier) Delete(ctx context.Context, d blob.Digest) error {
	if err := blob.ValidateDigest(d); err != nil {
		return err
	}
	t.forget(d)
	return fmt.Errorf("reapi %q: delete %s: %w (REAPI has no delete; the server evicts)", t.cfg.Name, d, blob.ErrUnsupported)
}

// WalkRefs returns blob.ErrUnsupported: REAPI cannot list an ActionCache.
func (t *Tier) WalkRefs(ctx context.Context, namespace string, fn func(blob.RefKey, blob.Ref) error) error {
	return fmt.Errorf("reapi %q: walk refs: %w (REAPI cannot list an ActionCache)", t.cfg.Name, blob.ErrUnsupported)
}

// Stats is a snapshot of the tier's health counters.
type Stats struct {
	Breaker BreakerStats
	// Retries counts call attempts that were retried.
	Retries uint64
	// Resumes counts ByteStream Reads resumed at an offset after their
	// stream broke, and parts read ahead that were read again from where
	// they stopped.
	Resumes uint64
	// RepairsRefused counts uploads over a copy that read corrupt which
	// the server declined because it holds the blob (the bad copy stays).
	RepairsRefused uint64
}

// Stats returns the tier's health counters.
func (t *Tier) Stats() Stats {
	return Stats{Breaker: t.breaker.stats(), Retries: t.retries.Load(),
		Resumes: t.resumes.Load(), RepairsRefused: t.repairsRefused.Load()}
}

// Close closes the connection. Calls after Close fail with
// blob.ErrUnavailable; readers already open fail on their next Read.
func (t *Tier) Close() error {
	if t.closed.Swap(true) {
		return nil
	}
	return t.conn.Close()
}

// forget drops what the tier cached about d (after a miss).
func (t *Tier) forget(d blob.Digest) {
	t.exists.remove(d.Encoded())
	t.sizes.remove(d.Encoded())
}

// markCorrupt records that the server served bytes that are not d. REAPI
// cannot delete them, so the tier reports d missing until a Put re-uploads
// it (a stack writes back what it fetched elsewhere, which repairs the
// server's copy where the server accepts the overwrite).
func (t *Tier) markCorrupt(d blob.Digest) {
	t.forget(d)
	t.corrupt.put(d.Encoded(), struct{}{})
}

// isCorrupt reports whether d was served corrupt and not re-uploaded since.
func (t *Tier) isCorrupt(d blob.Digest) bool {
	_, bad := t.corrupt.get(d.Encoded())
	return bad
}

func (t *Tier) corruptMiss(op string, d blob.Digest) error {
	return fmt.Errorf("reapi %q: %s %s: %w (the server served corrupt bytes for it; a Put re-uploads it)", t.cfg.Name, op, d, blob.ErrNotFound)
}

// learnSize records d's size; indexed marks the size index entry as known
// to exist.
func (t *Tier) learnSize(d blob.Digest, size int64, indexed bool) {
	t.sizes.update(d.Encoded(), func(old sizeInfo, existed bool) sizeInfo {
		if existed && old.size == size {
			return sizeInfo{size: size, indexed: old.indexed || indexed}
		}
		return sizeInfo{size: size, indexed: indexed}
	})
}

// markPresent records d as present for ExistenceTTL.
func (t *Tier) markPresent(d blob.Digest) {
	if t.cfg.ExistenceTTL > 0 {
		t.exists.put(d.Encoded(), t.cfg.Now().Add(t.cfg.ExistenceTTL))
	}
}

// knownPresent reports whether d was seen present within ExistenceTTL.
func (t *Tier) knownPresent(d blob.Digest) bool {
	exp, ok := t.exists.get(d.Encoded())
	if !ok {
		return false
	}
	if !t.cfg.Now().Before(exp) {
		t.exists.remove(d.Encoded())
		return false
	}
	return true
}
