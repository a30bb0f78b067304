// Package fleettest builds, for tests and the benchmark harness, a fleet
// of executors that share one REAPI server and one registry: each executor
// has its own memory and disk tiers, registry client and fetcher, as
// separate hosts would. The registry counts blob GETs per digest and the
// REAPI server counts uploads per blob, so that tests can assert how many
// times the fleet pulled and stored each blob.
package fleettest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sync"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/prometheus/client_golang/prometheus"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/internal/reapitest"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/registry/credential"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/disk"
	"github.com/strata-oci/strata/tiers/memory"
	"github.com/strata-oci/strata/tiers/reapi"
)

// The fleet's registry requires these credentials for every request.
const (
	User     = "fleet"
	Password = "fleet-PASSWORD"
)

// Key is the identity-derived secret the executors share.
var Key = []byte("fleet-fleet-fleet-fleet-fleet-fleet-32")

// Options configure a Fleet.
type Options struct {
	// N is the number of executors.
	N int
	// Leases turns fleet-wide fill leases on.
	Leases bool
	// StallTimeout is the REAPI tier's stall timeout (default 5s).
	StallTimeout time.Duration
	// Layers and LayerSize shape the image Push pushes (default 8 layers
	// of about 1 MiB, each distinct).
	Layers, LayerSize int
}

// Fleet is N executors, one registry, one REAPI server.
type Fleet struct {
	Host  string            // the registry
	Srv   *reapitest.Server // the shared REAPI server
	Execs []*Executor
	// OnBlobGET, if set before Run, runs in the registry's handler for
	// every blob GET with the index of the executor that made it; when it
	// returns true it has answered the request itself.
	OnBlobGET func(exec int, digest string, w http.ResponseWriter) bool

	o       Options
	mu      sync.Mutex
	gets    map[string]int // blob GETs at the registry, by digest
	uploads map[string]int // CAS uploads (ByteStream writes, batch entries), by sha256 hex
}

// Executor is one host of the fleet.
type Executor struct {
	Fetcher *fetcher.Fetcher
	Metrics *prometheus.Registry
	Ctx     context.Context
	Cancel  context.CancelFunc
}

var (
	blobPath   = regexp.MustCompile(`/blobs/(sha256:[0-9a-f]{64})$`)
	execAgent  = regexp.MustCompile(`exec-(\d+)`)
	uploadHash = regexp.MustCompile(`/blobs/([0-9a-f]{64})/`)
)

// New starts the registry and the REAPI server and builds the executors.
func New(tb testing.TB, o Options) *Fleet {
	tb.Helper()
	if o.Layers == 0 {
		o.Layers = 8
	}
	if o.LayerSize == 0 {
		o.LayerSize = 1 << 20
	}
	if o.StallTimeout == 0 {
		o.StallTimeout = 5 * time.Second
	}
	fl := &Fleet{o: o, gets: map[string]int{}, uploads: map[string]int{}}
	fl.Host = registrytest.InProcess(tb, fl.countBlobs, registrytest.BasicAuthHandler(User, Password))
	fl.Srv = reapitest.NewServer(tb, reapitest.Options{
		Strict: true,
		Unary:  []grpc.UnaryServerInterceptor{fl.countBatch},
		Stream: []grpc.StreamServerInterceptor{fl.countStream},
	})
	for i := range o.N {
		fl.Execs = append(fl.Execs, fl.executor(tb, i))
	}
	return fl
}

func (fl *Fleet) executor(tb testing.TB, i int) *Executor {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	dk, err := disk.Open(disk.Config{Root: tb.TempDir(), Name: "disk"})
	if err != nil {
		tb.Fatal(err)
	}
	remote, err := reapi.New(context.Background(), reapi.Config{
		Endpoint: fl.Srv.Endpoint(), Instance: reapitest.Instance, Name: "remote",
		StallTimeout: fl.o.StallTimeout,
		Retries:      reapi.RetryConfig{BackoffBase: time.Millisecond, BackoffMax: 5 * time.Millisecond},
	})
	if err != nil {
		tb.Fatal(err)
	}
	st := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{
		{Tier: memory.New(memory.Config{Name: "memory"}), Trusted: true}, {Tier: dk}, {Tier: remote, Shared: true},
	}})
	tb.Cleanup(func() { st.Close() })
	client, err := registry.New(registry.Config{AllowCIDRs: []string{"127.0.0.0/8"}, UserAgent: fmt.Sprintf("exec-%d", i)})
	if err != nil {
		tb.Fatal(err)
	}
	cfg := fetcher.DefaultConfig()
	reg := prometheus.NewRegistry()
	cfg.Store, cfg.Registry, cfg.Metrics, cfg.SigningKey = st, client, reg, Key
	if fl.o.Leases {
		cfg.Leases = fetcher.Leases{Store: remote, SigningKey: Key, TTL: 2 * time.Second, MaxWait: 20 * time.Second}
	}
	f, err := fetcher.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return &Executor{Fetcher: f, Metrics: reg, Ctx: ctx, Cancel: cancel}
}

func (fl *Fleet) countBlobs(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if m := blobPath.FindStringSubmatch(r.URL.Path); m != nil && r.Method == http.MethodGet {
			fl.mu.Lock()
			fl.gets[m[1]]++
			hook := fl.OnBlobGET
			fl.mu.Unlock()
			if hook != nil {
				exec := -1
				if a := execAgent.FindStringSubmatch(r.UserAgent()); a != nil {
					fmt.Sscan(a[1], &exec)
				}
				if hook(exec, m[1], w) {
					return
				}
			}
		}
		h.ServeHTTP(w, r)
	})
}

func (fl *Fleet) countBatch(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if b, ok := req.(*repb.BatchUpdateBlobsRequest); ok {
		fl.mu.Lock()
		for _, r := range b.GetRequests() {
			fl.uploads[r.GetDigest().GetHash()]++
		}
		fl.mu.Unlock()
	}
	return h(ctx, req)
}

func (fl *Fleet) countStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if info.FullMethod == "/google.bytestream.ByteStream/Write" {
		return h(srv, &countingWrite{ServerStream: ss, fl: fl})
	}
	return h(srv, ss)
}

// countingWrite counts a ByteStream Write by the hash in its resource name.
type countingWrite struct {
	grpc.ServerStream
	fl   *Fleet
	seen bool
}

func (s *countingWrite) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if w, ok := m.(*bspb.WriteRequest); ok && err == nil && !s.seen {
		s.seen = true
		if h := uploadHash.FindStringSubmatch(w.GetResourceName()); h != nil {
			s.fl.mu.Lock()
			s.fl.uploads[h[1]]++
			s.fl.mu.Unlock()
		}
	}
	return err
}

// Push pushes a private image of distinct random layers and returns its
// reference and layers; it resets the GET counts.
func (fl *Fleet) Push(tb testing.TB) (ref string, layers [][]byte) {
	tb.Helper()
	for i := range fl.o.Layers {
		layers = append(layers, registrytest.RandomBytes(tb, fl.o.LayerSize+i))
	}
	registrytest.Push(tb, fl.Host, "private/fleet:v1", registrytest.Image(tb, layers...), &authn.Basic{Username: User, Password: Password})
	fl.mu.Lock()
	fl.gets = map[string]int{}
	fl.mu.Unlock()
	return fl.Host + "/private/fleet:v1", layers
}

// Credential is the fleet registry's credential.
func Credential() credential.Credential { return credential.Basic("", User, Password) }

// Result is one executor's outcome in Run.
type Result struct {
	Layers [][]byte      // every layer's bytes, read to the verified end
	Ready  time.Duration // from the common start until every layer was read
	Err    error
}

// Run makes every executor fetch ref and read every layer (in parallel,
// as the materializers do) at the same moment.
func (fl *Fleet) Run(ref string) []Result {
	out := make([]Result, len(fl.Execs))
	start := make(chan struct{})
	var wg sync.WaitGroup
	var t0 time.Time
	for i, e := range fl.Execs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			out[i].Layers, out[i].Err = fetchAll(e, ref)
			out[i].Ready = time.Since(t0)
		}()
	}
	t0 = time.Now()
	close(start)
	wg.Wait()
	return out
}

func fetchAll(e *Executor, ref string) ([][]byte, error) {
	img, err := e.Fetcher.FetchImage(e.Ctx, ref, Credential())
	if err != nil {
		return nil, err
	}
	ls := img.Layers()
	out := make([][]byte, len(ls))
	errs := make([]error, len(ls))
	var wg sync.WaitGroup
	for i, l := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc, err := l.Open(e.Ctx)
			if err != nil {
				errs[i] = err
				return
			}
			defer rc.Close()
			out[i], errs[i] = io.ReadAll(rc)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// GETs is the number of registry GETs of blob d.
func (fl *Fleet) GETs(d blob.Digest) int {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.gets[string(d)]
}

// AllGETs returns the registry GETs of every blob, by digest.
func (fl *Fleet) AllGETs() map[string]int {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	m := make(map[string]int, len(fl.gets))
	for k, v := range fl.gets {
		m[k] = v
	}
	return m
}

// Uploads is the number of CAS uploads of blob d.
func (fl *Fleet) Uploads(d blob.Digest) int {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.uploads[d.Hex()]
}

// LeaseEvents sums strata_fetch_leases_total{event} over the executors.
func (fl *Fleet) LeaseEvents(event string) int {
	n := 0
	for _, e := range fl.Execs {
		mfs, _ := e.Metrics.Gather()
		for _, mf := range mfs {
			if mf.GetName() != fetcher.MetricLeases {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "event" && l.GetValue() == event {
						n += int(m.GetCounter().GetValue())
					}
				}
			}
		}
	}
	return n
}
