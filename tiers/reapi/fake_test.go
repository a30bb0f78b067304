package reapi

import (
	"bytes"
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"github.com/bazelbuild/remote-apis-sdks/go/pkg/fakes"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	bspb "google.golang.org/genproto/googleapis/bytestream"
)

// fakeServer is the SDK's fake REAPI server (CAS, ByteStream, ActionCache,
// Capabilities) on a loopback port, made strict where production servers
// are: its ActionCache refuses entries whose outputs are not in the CAS (as
// bazel-remote and Buildbarn do). It can advertise zstd, be stopped and
// restarted on the same address, and take interceptors for fault
// injection. Its instance name is "instance".
type fakeServer struct {
	t    testing.TB
	CAS  *fakes.CAS
	AC   *fakes.ActionCache
	exec *fakes.Exec
	opts fakeOptions

	mu   sync.Mutex
	addr string
	srv  *grpc.Server
	// rot holds hashes whose stored bytes have "rotted": reads of them
	// have a byte flipped, until the blob is uploaded again.
	rot sync.Map
}

// rotBlob damages the stored bytes of hash behind the tier's back, as a
// failing disk would: every read of it is corrupt until it is re-uploaded.
func (f *fakeServer) rotBlob(hash string) { f.rot.Store(hash, true) }

// resourceHash returns the hash in a ByteStream resource name.
func resourceHash(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		if (p == "blobs" || p == "zstd") && i+1 < len(parts) {
			return parts[i+1]
		}
	}
	return ""
}

// rotInterceptors corrupt reads of rotted blobs and heal them on upload.
func (f *fakeServer) rotInterceptors() (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if r, ok := req.(*repb.BatchUpdateBlobsRequest); ok {
			for _, b := range r.GetRequests() {
				f.rot.Delete(b.GetDigest().GetHash())
			}
		}
		return h(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		switch info.FullMethod {
		case "/google.bytestream.ByteStream/Read":
			return h(srv, &rotStream{ServerStream: ss, f: f})
		case "/google.bytestream.ByteStream/Write":
			return h(srv, &healStream{ServerStream: ss, f: f})
		}
		return h(srv, ss)
	}
	return unary, stream
}

type rotStream struct {
	grpc.ServerStream
	f       *fakeServer
	rotten  bool
	flipped bool
}

func (s *rotStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if r, ok := m.(*bspb.ReadRequest); ok && err == nil {
		_, s.rotten = s.f.rot.Load(resourceHash(r.GetResourceName()))
	}
	return err
}

func (s *rotStream) SendMsg(m any) error {
	if r, ok := m.(*bspb.ReadResponse); ok && s.rotten && !s.flipped && len(r.Data) > 0 {
		r.Data = bytes.Clone(r.Data)
		r.Data[len(r.Data)/2] ^= 0x01
		s.flipped = true
	}
	return s.ServerStream.SendMsg(m)
}

type healStream struct {
	grpc.ServerStream
	f *fakeServer
}

func (s *healStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if r, ok := m.(*bspb.WriteRequest); ok && err == nil && r.GetResourceName() != "" {
		s.f.rot.Delete(resourceHash(r.GetResourceName()))
	}
	return err
}

type fakeOptions struct {
	// zstd makes Capabilities advertise ZSTD for ByteStream and batches.
	zstd bool
	// maxBatch overrides max_batch_total_size_bytes (and the fake's own check).
	maxBatch int64
	// acReadOnly makes Capabilities say update_enabled=false.
	acReadOnly bool
	unary      []grpc.UnaryServerInterceptor
	stream     []grpc.StreamServerInterceptor
	creds      credentials.TransportCredentials
}

func startFake(t testing.TB, o fakeOptions) *fakeServer {
	t.Helper()
	cas := fakes.NewCAS()
	if o.maxBatch > 0 {
		cas.BatchSize = int(o.maxBatch)
	}
	ac := fakes.NewActionCache()
	f := &fakeServer{t: t, CAS: cas, AC: ac, exec: fakes.NewExec(t, ac, cas), opts: o, addr: "127.0.0.1:0"}
	f.start()
	t.Cleanup(f.stop)
	return f
}

func (f *fakeServer) endpoint() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return "grpc://" + f.addr
}

func (f *fakeServer) start() {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	var lis net.Listener
	var err error
	// On restart the port may linger briefly; retry for a moment.
	for i := 0; i < 50; i++ {
		if lis, err = net.Listen("tcp", f.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		f.t.Fatalf("listen %s: %v", f.addr, err)
	}
	f.addr = lis.Addr().String()
	rotU, rotS := f.rotInterceptors()
	var sopts []grpc.ServerOption
	sopts = append(sopts, grpc.ChainUnaryInterceptor(append([]grpc.UnaryServerInterceptor{rotU}, f.opts.unary...)...),
		grpc.ChainStreamInterceptor(append([]grpc.StreamServerInterceptor{rotS}, f.opts.stream...)...))
	if f.opts.creds != nil {
		sopts = append(sopts, grpc.Creds(f.opts.creds))
	}
	srv := grpc.NewServer(sopts...)
	bsgrpc.RegisterByteStreamServer(srv, f.CAS)
	repb.RegisterContentAddressableStorageServer(srv, f.CAS)
	repb.RegisterActionCacheServer(srv, &strictAC{ActionCache: f.AC, cas: f.CAS})
	repb.RegisterCapabilitiesServer(srv, &fakeCaps{exec: f.exec, o: f.opts})
	f.srv = srv
	go srv.Serve(lis)
}

// stop shuts the server down at once, breaking open streams.
func (f *fakeServer) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.srv != nil {
		f.srv.Stop()
		f.srv = nil
	}
}

// restart stops the server and starts it again on the same address with
// the same stored content.
func (f *fakeServer) restart() {
	f.stop()
	f.start()
}

// fakeCaps wraps the fake's Capabilities to advertise what a test needs.
type fakeCaps struct {
	exec *fakes.Exec
	o    fakeOptions
}

func (c *fakeCaps) GetCapabilities(ctx context.Context, req *repb.GetCapabilitiesRequest) (*repb.ServerCapabilities, error) {
	if req.InstanceName != "instance" {
		return nil, status.Errorf(codes.InvalidArgument, "fake serves instance \"instance\", not %q", req.InstanceName)
	}
	res, err := c.exec.GetCapabilities(ctx, req)
	if err != nil {
		return nil, err
	}
	if c.o.zstd {
		res.CacheCapabilities.SupportedCompressors = []repb.Compressor_Value{repb.Compressor_ZSTD}
		res.CacheCapabilities.SupportedBatchUpdateCompressors = []repb.Compressor_Value{repb.Compressor_ZSTD}
	}
	if c.o.maxBatch > 0 {
		res.CacheCapabilities.MaxBatchTotalSizeBytes = c.o.maxBatch
	}
	if c.o.acReadOnly {
		res.CacheCapabilities.ActionCacheUpdateCapabilities.UpdateEnabled = false
	}
	return res, nil
}

// strictAC is the fake ActionCache made as strict as bazel-remote and
// Buildbarn: an entry may only reference blobs the CAS holds, on write and
// on read, and it checks the instance name.
type strictAC struct {
	*fakes.ActionCache
	cas *fakes.CAS
}

func (s *strictAC) missingOutputs(res *repb.ActionResult) error {
	for _, f := range res.GetOutputFiles() {
		d := digest.NewFromProtoUnvalidated(f.GetDigest())
		if _, ok := s.cas.Get(d); !ok {
			return status.Errorf(codes.FailedPrecondition, "output %q references %s, which is not in the CAS", f.GetPath(), d)
		}
	}
	return nil
}

func (s *strictAC) UpdateActionResult(ctx context.Context, req *repb.UpdateActionResultRequest) (*repb.ActionResult, error) {
	if req.InstanceName != "instance" {
		return nil, status.Errorf(codes.InvalidArgument, "fake serves instance \"instance\", not %q", req.InstanceName)
	}
	if err := s.missingOutputs(req.GetActionResult()); err != nil {
		return nil, err
	}
	return s.ActionCache.UpdateActionResult(ctx, req)
}

func (s *strictAC) GetActionResult(ctx context.Context, req *repb.GetActionResultRequest) (*repb.ActionResult, error) {
	if req.InstanceName != "instance" {
		return nil, status.Errorf(codes.InvalidArgument, "fake serves instance \"instance\", not %q", req.InstanceName)
	}
	res, err := s.ActionCache.GetActionResult(ctx, req)
	if err != nil {
		return nil, err
	}
	if s.missingOutputs(res) != nil {
		return nil, status.Error(codes.NotFound, "entry references evicted blobs")
	}
	return res, nil
}

// newTier returns a tier on f with test-friendly defaults; mod adjusts the
// config. The tier is closed at cleanup.
func newTier(t testing.TB, f *fakeServer, mod func(*Config)) *Tier {
	t.Helper()
	// A generous CallTimeout: the fake compresses a whole blob before its
	// first message, which can take long on a loaded machine. Tests of
	// timeouts set their own.
	cfg := Config{Endpoint: f.endpoint(), Instance: "instance", Name: "reapi-test", CallTimeout: time.Minute,
		Retries: RetryConfig{BackoffBase: time.Millisecond, BackoffMax: 5 * time.Millisecond}}
	if mod != nil {
		mod(&cfg)
	}
	tier, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { tier.Close() })
	return tier
}
