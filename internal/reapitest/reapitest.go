// Package reapitest serves the Remote Execution API SDK's fake CAS and
// ActionCache on loopback for tests of code that uses a shared REAPI tier,
// with knobs that make it behave like production servers (zstd, batch
// limits, a strict ActionCache, a read-only ActionCache, servers that keep
// their copy on a re-upload) and a fault injector in front of it (see
// Fault): broken connections, aborted and stalled streams, flipped bytes,
// UNAVAILABLE and RESOURCE_EXHAUSTED answers, and CAS entries lost behind
// the ActionCache entries that name them.
//
// The fake's instance name is Instance. Faults and counters are per Server
// and safe for concurrent use.
package reapitest

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/fakes"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// Instance is the instance name tests pass to the tier.
const Instance = "instance"

// Start serves a fresh fake CAS and ActionCache on 127.0.0.1 and returns
// its "grpc://host:port" endpoint. The server stops in t.Cleanup.
func Start(t *testing.T) string {
	t.Helper()
	return NewServer(t, Options{}).Endpoint()
}

// Options configure a Server. The zero value is the SDK fake as it is,
// behind this package's ByteStream Read (which honours read_offset).
type Options struct {
	// Zstd makes Capabilities advertise ZSTD for ByteStream and batch
	// uploads.
	Zstd bool
	// MaxBatch sets max_batch_total_size_bytes (and the fake's own check);
	// 0 keeps the fake's default.
	MaxBatch int64
	// ACReadOnly makes Capabilities say update_enabled=false.
	ACReadOnly bool
	// Strict makes the ActionCache as strict as bazel-remote and Buildbarn:
	// it refuses entries whose outputs are not in the CAS on write
	// (FAILED_PRECONDITION) and reports them missing on read (NOT_FOUND),
	// and it checks the instance name.
	Strict bool
	// KeepExisting makes a ByteStream Write of a blob the CAS holds end at
	// once with committed_size (as bazel-remote and BuildBuddy do): the
	// stored copy is kept, whatever it is. BatchUpdateBlobs still
	// overwrites.
	KeepExisting bool
	// ChunkSize is the data size of one ByteStream ReadResponse; default
	// 64 KiB.
	ChunkSize int
	// StoredZstd keeps the zstd form of a blob (as uploaded to
	// compressed-blobs, or made at its first whole compressed read) and
	// serves whole compressed-blobs reads from it, as servers that store
	// blobs compressed do (bazel-remote's default storage mode) instead
	// of compressing on every read as the SDK fake does. Reads from an
	// offset still compress the rest.
	StoredZstd bool
	// Unary and Stream are extra interceptors, run after the fault
	// injector (closer to the fake).
	Unary  []grpc.UnaryServerInterceptor
	Stream []grpc.StreamServerInterceptor
	// Creds are the server's transport credentials; nil is plaintext.
	Creds credentials.TransportCredentials
}

// Server is the fake REAPI server. CAS and AC are the SDK fakes behind it
// (their counters and Put/Get work as documented there).
type Server struct {
	CAS *fakes.CAS
	AC  *fakes.ActionCache

	t    testing.TB
	o    Options
	exec *fakes.Exec
	cas  *casService

	mu    sync.Mutex
	addr  string
	srv   *grpc.Server
	lis   *trackingListener
	fault faultSet
	calls map[Call]int
}

// NewServer starts a Server on 127.0.0.1. It stops in t.Cleanup.
func NewServer(t testing.TB, o Options) *Server {
	t.Helper()
	if o.ChunkSize <= 0 {
		o.ChunkSize = 64 << 10
	}
	cas := fakes.NewCAS()
	if o.MaxBatch > 0 {
		cas.BatchSize = int(o.MaxBatch)
	}
	ac := fakes.NewActionCache()
	s := &Server{CAS: cas, AC: ac, t: t, o: o, exec: fakes.NewExec(t, ac, cas),
		addr: "127.0.0.1:0", calls: map[Call]int{}}
	s.cas = newCASService(s)
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// Endpoint returns "grpc://host:port". It stays the same across Restart.
func (s *Server) Endpoint() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return "grpc://" + s.addr
}

func (s *Server) start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var lis net.Listener
	var err error
	// On restart the port may linger briefly; retry for a moment.
	for i := 0; i < 50; i++ {
		if lis, err = net.Listen("tcp", s.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatalf("reapitest: listen %s: %v", s.addr, err)
	}
	s.addr = lis.Addr().String()
	s.lis = newTrackingListener(lis)
	sopts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(append([]grpc.UnaryServerInterceptor{s.unaryFaults}, s.o.Unary...)...),
		grpc.ChainStreamInterceptor(append([]grpc.StreamServerInterceptor{s.streamFaults}, s.o.Stream...)...),
	}
	if s.o.Creds != nil {
		sopts = append(sopts, grpc.Creds(s.o.Creds))
	}
	srv := grpc.NewServer(sopts...)
	bsgrpc.RegisterByteStreamServer(srv, s.cas)
	repb.RegisterContentAddressableStorageServer(srv, s.cas)
	repb.RegisterActionCacheServer(srv, &actionCache{ActionCache: s.AC, s: s})
	repb.RegisterCapabilitiesServer(srv, &capabilities{s: s})
	s.srv = srv
	go srv.Serve(s.lis)
}

// Stop shuts the server down at once, breaking open streams. Stored
// content survives for Restart. It is safe to call more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

// Restart stops the server and starts it again on the same address with
// the same stored content (and the same faults).
func (s *Server) Restart() {
	s.Stop()
	s.start()
}

// Calls returns how many calls of kind k reached the server (faulted or
// not).
func (s *Server) Calls(k Call) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[k]
}

// ReadOffsets returns the read_offset of every ByteStream Read of the blob
// with this sha256 hex hash, in arrival order.
func (s *Server) ReadOffsets(hash string) []int64 { return s.cas.readOffsets(hash) }

// Lose removes the blob with this sha256 hex hash from the CAS, as an
// eviction would: reads miss, FindMissingBlobs reports it missing, and a
// strict ActionCache drops entries that name it. An upload of the blob
// brings it back.
func (s *Server) Lose(hash string) { s.cas.lose(hash) }

func (s *Server) count(k Call) {
	s.mu.Lock()
	s.calls[k]++
	s.mu.Unlock()
}

// capabilities wraps the fake's Capabilities to advertise what Options ask.
type capabilities struct{ s *Server }

func (c *capabilities) GetCapabilities(ctx context.Context, req *repb.GetCapabilitiesRequest) (*repb.ServerCapabilities, error) {
	if req.InstanceName != Instance {
		return nil, status.Errorf(codes.InvalidArgument, "fake serves instance %q, not %q", Instance, req.InstanceName)
	}
	res, err := c.s.exec.GetCapabilities(ctx, req)
	if err != nil {
		return nil, err
	}
	o := c.s.o
	if o.Zstd {
		res.CacheCapabilities.SupportedCompressors = []repb.Compressor_Value{repb.Compressor_ZSTD}
		res.CacheCapabilities.SupportedBatchUpdateCompressors = []repb.Compressor_Value{repb.Compressor_ZSTD}
	}
	if o.MaxBatch > 0 {
		res.CacheCapabilities.MaxBatchTotalSizeBytes = o.MaxBatch
	}
	if o.ACReadOnly {
		res.CacheCapabilities.ActionCacheUpdateCapabilities.UpdateEnabled = false
	}
	return res, nil
}

// trackingListener remembers accepted connections by their remote address,
// so a fault can drop the connection a call arrived on.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns map[string]net.Conn
}

func newTrackingListener(l net.Listener) *trackingListener {
	return &trackingListener{Listener: l, conns: map[string]net.Conn{}}
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns[c.RemoteAddr().String()] = c
		l.mu.Unlock()
	}
	return c, err
}

// drop closes the connection whose remote address is addr.
func (l *trackingListener) drop(addr string) {
	l.mu.Lock()
	c := l.conns[addr]
	delete(l.conns, addr)
	l.mu.Unlock()
	if c != nil {
		c.Close()
	}
}
