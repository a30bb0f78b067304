package reapi

import (
	"bytes"
	"cmp"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	bspb "google.golang.org/genproto/googleapis/bytestream"

	"github.com/strata-oci/strata/internal/reapitest"
)

// fakeServer is the SDK's fake REAPI server (CAS, ByteStream, ActionCache,
// Capabilities) on a loopback port, served by internal/reapitest: strict
// where production servers are (its ActionCache refuses entries whose
// outputs are not in the CAS, as bazel-remote and Buildbarn do), with a
// ByteStream Read that honours read_offset, and the fault injector
// (f.Inject). It can advertise zstd, be stopped and restarted on the same
// address, and take extra interceptors. Its instance name is "instance".
type fakeServer struct {
	*reapitest.Server
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
	// keepExisting makes ByteStream writes of a stored blob keep the
	// stored copy (bazel-remote, BuildBuddy).
	keepExisting bool
	// lenient makes the ActionCache serve entries whose outputs are gone.
	lenient bool
	// chunk is the data size of one ReadResponse; default 2 MiB, as the
	// SDK fake sends.
	chunk  int
	unary  []grpc.UnaryServerInterceptor
	stream []grpc.StreamServerInterceptor
	creds  credentials.TransportCredentials
}

func startFake(t testing.TB, o fakeOptions) *fakeServer {
	t.Helper()
	f := &fakeServer{}
	rotU, rotS := f.rotInterceptors()
	f.Server = reapitest.NewServer(t, reapitest.Options{
		Zstd: o.zstd, MaxBatch: o.maxBatch, ACReadOnly: o.acReadOnly, Strict: !o.lenient,
		KeepExisting: o.keepExisting, ChunkSize: cmp.Or(o.chunk, 2<<20),
		Unary:  append([]grpc.UnaryServerInterceptor{rotU}, o.unary...),
		Stream: append([]grpc.StreamServerInterceptor{rotS}, o.stream...),
		Creds:  o.creds,
	})
	return f
}

func (f *fakeServer) endpoint() string { return f.Endpoint() }

// stop shuts the server down at once, breaking open streams.
func (f *fakeServer) stop() { f.Stop() }

// restart stops the server and starts it again on the same address with
// the same stored content.
func (f *fakeServer) restart() { f.Restart() }

// newTier returns a tier on f with test-friendly defaults; mod adjusts the
// config. The tier is closed at cleanup.
func newTier(t testing.TB, f *fakeServer, mod func(*Config)) *Tier {
	t.Helper()
	// A generous CallTimeout: the fake compresses a whole blob before its
	// first message, which can take long on a loaded machine. Tests of
	// timeouts set their own.
	cfg := Config{Endpoint: f.endpoint(), Instance: "instance", Name: "reapi-test", CallTimeout: time.Minute, StallTimeout: time.Minute,
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
