package reapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	bspb "google.golang.org/genproto/googleapis/bytestream"

	"github.com/strata-oci/strata/blob"
)

const bsRead = "/google.bytestream.ByteStream/Read"
const findMissing = "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"

// sendHook wraps a server stream so a test can alter or block what the
// server sends.
type sendHook struct {
	grpc.ServerStream
	onSend func(n int, m any) error // n counts messages sent so far
	n      int
}

func (s *sendHook) SendMsg(m any) error {
	if err := s.onSend(s.n, m); err != nil {
		return err
	}
	s.n++
	return s.ServerStream.SendMsg(m)
}

// readHook returns a stream interceptor applying onSend to ByteStream Reads
// while enabled is set.
func readHook(enabled *atomic.Bool, onSend func(ctx context.Context, n int, m any) error) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.FullMethod != bsRead || !enabled.Load() {
			return handler(srv, ss)
		}
		return handler(srv, &sendHook{ServerStream: ss, onSend: func(n int, m any) error { return onSend(ss.Context(), n, m) }})
	}
}

// TestServerStoppedMidStream: the server dies after sending the first
// message; the read fails with ErrUnavailable and never reaches EOF.
func TestServerStoppedMidStream(t *testing.T) {
	for _, zstd := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "zstd"}[zstd], func(t *testing.T) {
			var enabled atomic.Bool
			firstSent := make(chan struct{})
			var once sync.Once
			f := startFake(t, fakeOptions{zstd: zstd, stream: []grpc.StreamServerInterceptor{
				readHook(&enabled, func(ctx context.Context, n int, m any) error {
					if n >= 1 {
						once.Do(func() { close(firstSent) })
						<-ctx.Done() // hold the rest until the server is stopped
						return ctx.Err()
					}
					return nil
				}),
			}})
			tier := newTier(t, f, nil)
			data := randomBytes(21, 8<<20) // incompressible: several messages either way
			d := put(t, tier, data)
			enabled.Store(true)
			rc, _, err := tier.Open(context.Background(), d)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer rc.Close()
			buf := make([]byte, 1024)
			if _, err := io.ReadFull(rc, buf); err != nil {
				t.Fatalf("first read: %v", err)
			}
			<-firstSent
			f.stop()
			n, err := io.Copy(io.Discard, rc)
			if err == nil {
				t.Fatalf("read completed (%d more bytes) after the server died", n)
			}
			if !errors.Is(err, blob.ErrUnavailable) || errors.Is(err, blob.ErrMismatch) {
				t.Fatalf("read error = %v, want ErrUnavailable", err)
			}
			if int64(len(buf))+n >= int64(len(data)) {
				t.Fatalf("served %d of %d bytes", int64(len(buf))+n, len(data))
			}
			// Sticky: no later Read reaches EOF either.
			if _, err2 := rc.Read(buf); err2 == nil || err2 == io.EOF {
				t.Fatalf("Read after failure = %v", err2)
			}
		})
	}
}

// TestCorruptServer: bytes the server alters are rejected, and the tier
// forgets what it cached about the blob.
func TestCorruptServer(t *testing.T) {
	flip := func(_ context.Context, n int, m any) error {
		if r, ok := m.(*bspb.ReadResponse); ok && n == 0 && len(r.Data) > 0 {
			r.Data = bytes.Clone(r.Data)
			r.Data[len(r.Data)/2] ^= 0x40
		}
		return nil
	}
	extra := func(_ context.Context, n int, m any) error {
		if r, ok := m.(*bspb.ReadResponse); ok && n == 0 {
			r.Data = append(bytes.Clone(r.Data), 'x')
		}
		return nil
	}
	truncate := func(_ context.Context, n int, m any) error {
		if r, ok := m.(*bspb.ReadResponse); ok && n == 0 && len(r.Data) > 0 {
			r.Data = r.Data[:len(r.Data)-1]
		}
		return nil
	}
	tests := []struct {
		desc   string
		zstd   bool
		n      int
		onSend func(context.Context, int, any) error
	}{
		{"flipped byte", false, 100 << 10, flip},
		{"flipped byte in a multi-message stream", false, 5 << 20, flip},
		{"extra byte", false, 100 << 10, extra},
		{"missing byte", false, 100 << 10, truncate},
		{"flipped byte, zstd", true, 100 << 10, flip},
		{"missing byte, zstd", true, 100 << 10, truncate},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			var enabled atomic.Bool
			f := startFake(t, fakeOptions{zstd: tt.zstd, stream: []grpc.StreamServerInterceptor{readHook(&enabled, tt.onSend)}})
			tier := newTier(t, f, nil)
			data := bytes.Repeat([]byte("layer bytes "), tt.n/12)
			d := put(t, tier, data)
			enabled.Store(true)
			rc, _, err := tier.Open(context.Background(), d)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if !errors.Is(err, blob.ErrMismatch) {
				t.Fatalf("read = %d bytes, %v; want ErrMismatch", len(got), err)
			}
			if errors.Is(err, blob.ErrUnavailable) {
				t.Fatalf("corruption also reported as unavailable: %v", err)
			}
			if tier.knownPresent(d) {
				t.Error("blob still cached as present after a mismatch")
			}
			// REAPI cannot delete the bad copy: the tier reports it missing
			// (even though the server still has it) until a Put repairs it.
			enabled.Store(false)
			if _, err := tier.Stat(context.Background(), d); !errors.Is(err, blob.ErrNotFound) {
				t.Fatalf("Stat after a mismatch = %v, want ErrNotFound", err)
			}
			if _, _, err := tier.Open(context.Background(), d); !errors.Is(err, blob.ErrNotFound) {
				t.Fatalf("Open after a mismatch = %v, want ErrNotFound", err)
			}
			rd := digest.Digest{Hash: d.Encoded(), Size: int64(len(data))}
			writes := f.CAS.BlobWrites(rd)
			put(t, tier, data)
			if f.CAS.BlobWrites(rd) != writes+1 {
				t.Fatal("Put after a mismatch did not upload the blob again")
			}
			if got := readAll(t, tier, d); !bytes.Equal(got, data) {
				t.Fatal("read after repair differs")
			}
		})
	}
}

// TestRottedBlobRepaired: the server's copy rots; the tier detects it,
// misses, and a Put uploads a good copy over it.
func TestRottedBlobRepaired(t *testing.T) {
	for _, v := range variants {
		t.Run(v.desc, func(t *testing.T) {
			f := startFake(t, v.o)
			tier := newTier(t, f, v.mod)
			data := randomBytes(77, 3<<20)
			d := put(t, tier, data)
			f.rotBlob(d.Encoded())
			rc, _, err := tier.Open(context.Background(), d)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			_, err = io.ReadAll(rc)
			rc.Close()
			if !errors.Is(err, blob.ErrMismatch) {
				t.Fatalf("read of a rotted blob = %v, want ErrMismatch", err)
			}
			other := newTier(t, f, v.mod) // another executor sees it rotted too
			if rc, _, err := other.Open(context.Background(), d); err == nil {
				_, err = io.ReadAll(rc)
				rc.Close()
				if !errors.Is(err, blob.ErrMismatch) {
					t.Fatalf("other executor read = %v, want ErrMismatch", err)
				}
			}
			put(t, tier, data)
			for _, tr := range []*Tier{tier, newTier(t, f, v.mod)} {
				if got := readAll(t, tr, d); !bytes.Equal(got, data) {
					t.Fatal("read after repair differs")
				}
			}
		})
	}
}

// TestSlowServer: a server slower than CallTimeout is unavailable, for unary
// calls and for streams that stop moving; slowness is not retried.
func TestSlowServer(t *testing.T) {
	var slowUnary, stallRead atomic.Bool
	var unaryCalls atomic.Int32
	f := startFake(t, fakeOptions{
		unary: []grpc.UnaryServerInterceptor{func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if info.FullMethod == findMissing && slowUnary.Load() {
				unaryCalls.Add(1)
				<-ctx.Done() // slower than any timeout
				return nil, ctx.Err()
			}
			return h(ctx, req)
		}},
		stream: []grpc.StreamServerInterceptor{readHook(&stallRead, func(ctx context.Context, n int, m any) error {
			if n == 1 {
				<-ctx.Done()
				return ctx.Err()
			}
			return nil
		})},
	})
	data := randomBytes(5, 5<<20)
	d := put(t, newTier(t, f, nil), data)
	tier := newTier(t, f, func(c *Config) {
		c.CallTimeout, c.StallTimeout = 200*time.Millisecond, 200*time.Millisecond
		c.Breaker.Failures = -1
	})

	slowUnary.Store(true)
	_, err := tier.Stat(context.Background(), d)
	if !errors.Is(err, blob.ErrUnavailable) || errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Stat on a slow server = %v, want ErrUnavailable", err)
	}
	if n := unaryCalls.Load(); n != 1 {
		t.Errorf("a timed-out call was tried %d times, want 1 (timeouts are not retried)", n)
	}
	slowUnary.Store(false)

	stallRead.Store(true)
	rc, _, err := tier.Open(context.Background(), d)
	var n int64
	if err == nil {
		n, err = io.Copy(io.Discard, rc)
		rc.Close()
	}
	if !errors.Is(err, blob.ErrUnavailable) || !errors.Is(err, errStalled) {
		t.Fatalf("read of a stalled stream = %d bytes, %v; want ErrUnavailable (stalled)", n, err)
	}
	if n >= int64(len(data)) {
		t.Fatalf("stalled stream served all %d bytes", n)
	}
}

// TestServerRestart: the breaker opens on a dead server, refuses calls
// without contacting it, probes after the cool-down, and closes once the
// server is back. Time is the injected clock's.
func TestServerRestart(t *testing.T) {
	f := startFake(t, fakeOptions{})
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	tier := newTier(t, f, func(c *Config) {
		c.Now = clock
		c.Breaker = BreakerConfig{Failures: 2, CoolDown: time.Minute}
		c.ExistenceTTL = -1
	})
	ctx := context.Background()
	d := put(t, tier, []byte("survives restarts"))
	if _, err := tier.Stat(ctx, d); err != nil {
		t.Fatal(err)
	}

	f.stop()
	if _, err := tier.Stat(ctx, d); !errors.Is(err, blob.ErrUnavailable) {
		t.Fatalf("Stat on a dead server = %v", err)
	}
	s := tier.Stats().Breaker
	if s.State != BreakerOpen || s.Opens != 1 {
		t.Fatalf("breaker after failures = %+v, want open once", s)
	}
	rejected := s.Rejected
	for i := 0; i < 5; i++ {
		if _, err := tier.Stat(ctx, d); !errors.Is(err, blob.ErrUnavailable) || !errors.Is(err, errCircuitOpen) {
			t.Fatalf("Stat with the breaker open = %v, want ErrUnavailable (circuit open)", err)
		}
	}
	if got := tier.Stats().Breaker.Rejected - rejected; got != 5 {
		t.Fatalf("%d calls rejected by the open breaker, want 5", got)
	}

	// Cool-down over, server still down: the probe fails, the breaker reopens.
	advance(time.Minute)
	if _, err := tier.Stat(ctx, d); !errors.Is(err, blob.ErrUnavailable) {
		t.Fatalf("probe on a dead server = %v", err)
	}
	if s := tier.Stats().Breaker; s.State != BreakerOpen || s.Opens != 2 {
		t.Fatalf("breaker after a failed probe = %+v, want open twice", s)
	}

	// The server comes back; before the cool-down the breaker still refuses.
	f.restart()
	if _, err := tier.Stat(ctx, d); !errors.Is(err, errCircuitOpen) {
		t.Fatalf("Stat before the cool-down = %v, want circuit open", err)
	}
	advance(time.Minute)
	info, err := tier.Stat(ctx, d)
	if err != nil || info.Size != int64(len("survives restarts")) {
		t.Fatalf("Stat after the server returned = %+v, %v", info, err)
	}
	if s := tier.Stats().Breaker; s.State != BreakerClosed {
		t.Fatalf("breaker after a successful probe = %+v, want closed", s)
	}
	if got := readAll(t, tier, d); string(got) != "survives restarts" {
		t.Fatalf("read %q", got)
	}
}

// TestRetries: UNAVAILABLE and RESOURCE_EXHAUSTED are retried up to
// MaxAttempts; other failures are not.
func TestRetries(t *testing.T) {
	tests := []struct {
		desc      string
		code      codes.Code
		failures  int32
		wantCalls int32
		wantErr   error
	}{
		{"unavailable twice, then ok", codes.Unavailable, 2, 3, nil},
		{"resource exhausted once, then ok", codes.ResourceExhausted, 1, 2, nil},
		{"unavailable beyond the attempts", codes.Unavailable, 10, 3, blob.ErrUnavailable},
		{"internal is not retried", codes.Internal, 10, 1, blob.ErrUnavailable},
		{"permission denied is not retried", codes.PermissionDenied, 10, 1, blob.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			var calls, fail atomic.Int32
			var armed atomic.Bool
			f := startFake(t, fakeOptions{unary: []grpc.UnaryServerInterceptor{
				func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
					if info.FullMethod == findMissing && armed.Load() {
						calls.Add(1)
						if fail.Add(-1) >= 0 {
							return nil, status.Error(tt.code, "injected")
						}
					}
					return h(ctx, req)
				}}})
			tier := newTier(t, f, func(c *Config) { c.Breaker.Failures = -1; c.ExistenceTTL = -1 })
			d := put(t, tier, []byte("retry me"))
			retries0 := tier.Stats().Retries
			fail.Store(tt.failures)
			armed.Store(true)
			_, err := tier.Stat(context.Background(), d)
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("Stat = %v, want %v", err, tt.wantErr)
			}
			if got := calls.Load(); got != tt.wantCalls {
				t.Errorf("server saw %d calls, want %d", got, tt.wantCalls)
			}
			if got := tier.Stats().Retries - retries0; got != uint64(tt.wantCalls-1) {
				t.Errorf("Retries = %d, want %d", got, tt.wantCalls-1)
			}
		})
	}
}

// TestHeaders: configured headers reach the server on every kind of call
// and never appear in errors or in the printed Config.
func TestHeaders(t *testing.T) {
	const secret = "s3cr3t-api-key-value"
	var mu sync.Mutex
	valid := secret
	seen := map[string]bool{}
	check := func(ctx context.Context, method string) error {
		md, _ := metadata.FromIncomingContext(ctx)
		mu.Lock()
		defer mu.Unlock()
		if v := md.Get("x-api-key"); len(v) == 1 && v[0] == valid {
			seen[method] = true
			return nil
		}
		return status.Error(codes.Unauthenticated, "missing api key")
	}
	f := startFake(t, fakeOptions{
		unary: []grpc.UnaryServerInterceptor{func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := check(ctx, info.FullMethod); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}},
		stream: []grpc.StreamServerInterceptor{func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := check(ss.Context(), info.FullMethod); err != nil {
				return err
			}
			return h(srv, ss)
		}},
	})
	tier := newTier(t, f, func(c *Config) { c.Headers = map[string]string{"X-Api-Key": secret} })
	ctx := context.Background()
	d := put(t, tier, randomBytes(1, 5<<20)) // ByteStream write
	put(t, tier, []byte("small"))            // batch
	readAll(t, tier, d)
	k := blob.RefKey{Namespace: "tag", Name: "h"}
	if err := tier.PutRef(ctx, k, blob.Ref{Digest: d, Size: 5 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := tier.GetRef(ctx, k); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{findMissing, bsRead, "/google.bytestream.ByteStream/Write",
		"/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs",
		"/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchReadBlobs",
		"/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult",
		"/build.bazel.remote.execution.v2.ActionCache/GetActionResult",
		"/build.bazel.remote.execution.v2.Capabilities/GetCapabilities"} {
		if !seen[m] {
			t.Errorf("%s did not carry the header", m)
		}
	}

	// A wrong key is a configuration error at New.
	_, newErr := New(ctx, Config{Endpoint: f.endpoint(), Instance: "instance", Headers: map[string]string{"x-api-key": secret + "-wrong"}})
	if newErr == nil || !strings.Contains(newErr.Error(), "Unauthenticated") {
		t.Fatalf("New with a wrong key = %v, want the server's Unauthenticated", newErr)
	}
	// A key revoked while running: unavailable, not a miss.
	mu.Lock()
	valid = "rotated"
	mu.Unlock()
	tier.exists.remove(d.Encoded())
	_, err := tier.Stat(ctx, d)
	if !errors.Is(err, blob.ErrUnavailable) || errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Stat with a revoked key = %v, want ErrUnavailable", err)
	}
	cfg := Config{Endpoint: "grpc://h:1", Headers: map[string]string{"x-api-key": secret}}
	for _, s := range []string{err.Error(), newErr.Error(), goString(cfg)} {
		if strings.Contains(s, "s3cr3t") {
			t.Errorf("secret leaked: %s", s)
		}
	}
}

func goString(c Config) string { return fmt.Sprintf("%v %+v %#v %s", c, c, c, c) }
