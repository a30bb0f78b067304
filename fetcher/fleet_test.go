package fetcher_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/internal/reapitest"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/disk"
	"github.com/strata-oci/strata/tiers/memory"
	"github.com/strata-oci/strata/tiers/reapi"
)

// fleetKey is the identity-derived secret every executor of the test fleet
// shares.
var fleetKey = []byte("fleet-fleet-fleet-fleet-fleet-fleet-32")

// fleet is N executors (each its own memory and disk tiers, registry
// client and fetcher) sharing one REAPI server and one registry, which
// count what they serve and store per blob.
type fleet struct {
	host    string
	srv     *reapitest.Server
	execs   []*executor
	mu      sync.Mutex
	gets    map[string]int // blob GETs at the registry, by digest
	uploads map[string]int // CAS uploads (ByteStream writes, batch entries), by hash
	// onBlobGET, if set, runs (in the registry's handler) for every blob
	// GET, with the executor that made it.
	onBlobGET func(exec int, digest string, w http.ResponseWriter) bool
}

type executor struct {
	f      *fetcher.Fetcher
	reg    *prometheus.Registry
	ctx    context.Context
	cancel context.CancelFunc
}

var blobPath = regexp.MustCompile(`/blobs/(sha256:[0-9a-f]{64})$`)
var execAgent = regexp.MustCompile(`exec-(\d+)`)

type fleetOpts struct {
	n      int
	leases bool
	stall  time.Duration // the REAPI tier's stall timeout (default 5s)
}

func newFleet(t testing.TB, o fleetOpts) *fleet {
	t.Helper()
	fl := &fleet{gets: map[string]int{}, uploads: map[string]int{}}
	countBlobs := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if m := blobPath.FindStringSubmatch(r.URL.Path); m != nil && r.Method == http.MethodGet {
				fl.mu.Lock()
				fl.gets[m[1]]++
				hook := fl.onBlobGET
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
	fl.host = registrytest.InProcess(t, countBlobs, basicAuthFor("/v2/private/"))
	fl.srv = reapitest.NewServer(t, reapitest.Options{
		Strict: true,
		Unary: []grpc.UnaryServerInterceptor{func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if b, ok := req.(*repb.BatchUpdateBlobsRequest); ok {
				fl.mu.Lock()
				for _, r := range b.GetRequests() {
					fl.uploads[r.GetDigest().GetHash()]++
				}
				fl.mu.Unlock()
			}
			return h(ctx, req)
		}},
		Stream: []grpc.StreamServerInterceptor{func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if info.FullMethod == "/google.bytestream.ByteStream/Write" {
				return h(srv, &countingWrite{ServerStream: ss, fl: fl})
			}
			return h(srv, ss)
		}},
	})
	stall := o.stall
	if stall == 0 {
		stall = 5 * time.Second
	}
	for i := range o.n {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		mem := memory.New(memory.Config{Name: "memory"})
		dk, err := disk.Open(disk.Config{Root: t.TempDir(), Name: "disk"})
		if err != nil {
			t.Fatal(err)
		}
		remote, err := reapi.New(context.Background(), reapi.Config{
			Endpoint: fl.srv.Endpoint(), Instance: reapitest.Instance, Name: "remote",
			StallTimeout: stall,
			Retries:      reapi.RetryConfig{BackoffBase: time.Millisecond, BackoffMax: 5 * time.Millisecond},
		})
		if err != nil {
			t.Fatal(err)
		}
		st := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: mem, Trusted: true}, {Tier: dk}, {Tier: remote, Shared: true}}})
		t.Cleanup(func() { st.Close() })
		client, err := registry.New(registry.Config{AllowCIDRs: []string{"127.0.0.0/8"}, UserAgent: fmt.Sprintf("exec-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		cfg := fetcher.DefaultConfig()
		reg := prometheus.NewRegistry()
		cfg.Store, cfg.Registry, cfg.Metrics, cfg.SigningKey = st, client, reg, fleetKey
		if o.leases {
			cfg.Leases = fetcher.Leases{Store: remote, SigningKey: fleetKey, TTL: 2 * time.Second, MaxWait: 20 * time.Second}
		}
		f, err := fetcher.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		fl.execs = append(fl.execs, &executor{f: f, reg: reg, ctx: ctx, cancel: cancel})
	}
	return fl
}

// countingWrite counts a ByteStream Write by the hash in its resource name.
type countingWrite struct {
	grpc.ServerStream
	fl   *fleet
	seen bool
}

var uploadHash = regexp.MustCompile(`/blobs/([0-9a-f]{64})/`)

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

// run makes every executor fetch ref and read every layer to the end at
// the same moment; it returns each executor's layer bytes (nil and the
// error for one that failed).
func (fl *fleet) run(t testing.TB, ref string) ([][][]byte, []error) {
	t.Helper()
	out := make([][][]byte, len(fl.execs))
	errs := make([]error, len(fl.execs))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, e := range fl.execs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			img, err := e.f.FetchImage(e.ctx, ref, alice())
			if err != nil {
				errs[i] = err
				return
			}
			out[i], _, errs[i] = readLayers(e.ctx, img)
		}()
	}
	close(start)
	wg.Wait()
	return out, errs
}

func (fl *fleet) leaseEvents(event string) int {
	n := 0
	for _, e := range fl.execs {
		mfs, _ := e.reg.Gather()
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

// fleetImage pushes an 8-layer private image of distinct layers of about
// size bytes.
func fleetImage(t testing.TB, fl *fleet, size int) (ref string, layers [][]byte) {
	t.Helper()
	for i := range 8 {
		layers = append(layers, registrytest.RandomBytes(t, size+i))
	}
	registrytest.Push(t, fl.host, "private/fleet:v1", registrytest.Image(t, layers...), aliceAuth())
	fl.mu.Lock()
	fl.gets = map[string]int{}
	fl.mu.Unlock()
	return fl.host + "/private/fleet:v1", layers
}

// checkBytes fails unless every executor that succeeded read layers.
func checkBytes(t *testing.T, got [][][]byte, want [][]byte, errs []error, mayFail map[int]bool) {
	t.Helper()
	for i := range got {
		if mayFail[i] {
			continue
		}
		if errs[i] != nil {
			t.Errorf("executor %d: %v", i, errs[i])
			continue
		}
		for j := range want {
			if !bytes.Equal(got[i][j], want[j]) {
				t.Errorf("executor %d: layer %d differs", i, j)
			}
		}
	}
}

// TestFleetCollapsesPulls: 16 executors sharing a REAPI tier start the
// same private 8-layer image at once. With leases the registry serves
// each blob at most twice in all and the CAS receives each at most twice;
// without them (the control) every executor pulls.
func TestFleetCollapsesPulls(t *testing.T) {
	for _, tc := range []struct {
		desc   string
		leases bool
	}{
		{"with leases", true},
		{"control: no leases", false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			fl := newFleet(t, fleetOpts{n: 16, leases: tc.leases})
			ref, layers := fleetImage(t, fl, 1<<20)
			got, errs := fl.run(t, ref)
			checkBytes(t, got, layers, errs, nil)

			fl.mu.Lock()
			defer fl.mu.Unlock()
			maxGets, maxUploads := 0, 0
			for _, l := range layers {
				d := string(blob.FromBytes(l))
				maxGets = max(maxGets, fl.gets[d])
				maxUploads = max(maxUploads, fl.uploads[strings.TrimPrefix(d, "sha256:")])
			}
			t.Logf("most registry GETs of one layer: %d; most CAS uploads of one layer: %d; leases taken %d, followed %d",
				maxGets, maxUploads, fl.leaseEvents("taken"), fl.leaseEvents("followed"))
			if !tc.leases {
				if maxGets < 4 {
					t.Fatalf("without leases the most-pulled layer was pulled %d times by 16 executors; the control shows nothing", maxGets)
				}
				return
			}
			if maxGets > 2 {
				t.Errorf("a layer was pulled %d times from the registry, want at most 2", maxGets)
			}
			if maxUploads > 2 {
				t.Errorf("a layer was uploaded %d times to the CAS, want at most 2", maxUploads)
			}
			for d, n := range fl.gets {
				if n > 2 {
					t.Errorf("blob %s pulled %d times, want at most 2", d, n)
				}
			}
			if f := fl.leaseEvents("followed"); f == 0 {
				t.Error("no executor followed a lease")
			}
		})
	}
}

// TestFleetLeaderKilled: the executor that pulls a layer first has its
// context cancelled halfway through the layer's bytes. Every other
// executor still ends with verified bytes; one of them takes the lease
// over.
func TestFleetLeaderKilled(t *testing.T) {
	fl := newFleet(t, fleetOpts{n: 16, leases: true})
	ref, layers := fleetImage(t, fl, 1<<20)
	victim := string(blob.FromBytes(layers[3]))
	var once sync.Once
	killed := -1
	fl.onBlobGET = func(exec int, d string, w http.ResponseWriter) bool {
		if d != victim {
			return false
		}
		first := false
		once.Do(func() { first = true; killed = exec })
		if !first {
			return false
		}
		// Half the bytes, then the executor dies.
		w.Header().Set("Content-Length", fmt.Sprint(len(layers[3])))
		w.WriteHeader(http.StatusOK)
		w.Write(layers[3][:len(layers[3])/2])
		w.(http.Flusher).Flush()
		fl.execs[exec].cancel()
		time.Sleep(100 * time.Millisecond)
		return true
	}
	got, errs := fl.run(t, ref)
	if killed < 0 {
		t.Fatal("no executor pulled the victim layer")
	}
	checkBytes(t, got, layers, errs, map[int]bool{killed: true})
	if errs[killed] == nil {
		t.Errorf("the killed executor %d succeeded", killed)
	}
	fl.mu.Lock()
	n := fl.gets[victim]
	fl.mu.Unlock()
	if n > 3 {
		t.Errorf("the victim layer was pulled %d times, want the killed pull plus at most 2", n)
	}
	t.Logf("victim layer pulls: %d; takeovers: %d", n, fl.leaseEvents("takeover"))
}

// TestFleetSharedTierStalls: the REAPI server stalls every streamed upload
// (the layers are too large for a batch, so no layer reaches the shared
// tier) and every read of one
// layer; leases then cannot collapse those pulls, but every executor still
// ends with verified bytes: a leader whose blob did not reach the shared
// tier tells the followers to pull themselves instead of waiting.
func TestFleetSharedTierStalls(t *testing.T) {
	fl := newFleet(t, fleetOpts{n: 8, leases: true, stall: 300 * time.Millisecond})
	ref, layers := fleetImage(t, fl, 5<<20)
	fl.srv.Inject(reapitest.Fault{Call: reapitest.Write, Action: reapitest.Stall, AfterBytes: 64 << 10})
	fl.srv.Inject(reapitest.Fault{Call: reapitest.Read, Action: reapitest.Stall, Hash: strings.TrimPrefix(string(blob.FromBytes(layers[5])), "sha256:")})
	got, errs := fl.run(t, ref)
	checkBytes(t, got, layers, errs, nil)
	t.Logf("leases taken %d, followed %d, pulled at own deadline or on the holder's word %d",
		fl.leaseEvents("taken"), fl.leaseEvents("followed"), fl.leaseEvents("deadline"))
}

// BenchmarkFleet: N executors starting the same image together, with and
// without leases: registry GETs per layer and time until every executor
// has read every layer (time-to-ready of the slowest; the mean per
// executor is reported too).
func BenchmarkFleet(b *testing.B) {
	for _, n := range []int{1, 4, 16} {
		for _, leases := range []bool{false, true} {
			b.Run(fmt.Sprintf("n=%d/leases=%v", n, leases), func(b *testing.B) {
				var gets, ready float64
				for range b.N {
					b.StopTimer()
					fl := newFleet(b, fleetOpts{n: n, leases: leases})
					ref, layers := fleetImage(b, fl, 1<<20)
					b.StartTimer()
					start := time.Now()
					var mu sync.Mutex
					var sum time.Duration
					var wg sync.WaitGroup
					for _, e := range fl.execs {
						wg.Add(1)
						go func() {
							defer wg.Done()
							// Layers read in parallel, as the materializers do.
							img, err := e.f.FetchImage(e.ctx, ref, alice())
							if err != nil {
								b.Error(err)
								return
							}
							var lwg sync.WaitGroup
							for _, l := range img.Layers() {
								lwg.Add(1)
								go func() {
									defer lwg.Done()
									rc, err := l.Open(e.ctx)
									if err == nil {
										_, err = io.Copy(io.Discard, rc)
										rc.Close()
									}
									if err != nil {
										b.Error(err)
									}
								}()
							}
							lwg.Wait()
							mu.Lock()
							sum += time.Since(start)
							mu.Unlock()
						}()
					}
					wg.Wait()
					b.StopTimer()
					fl.mu.Lock()
					total := 0
					for _, l := range layers {
						total += fl.gets[string(blob.FromBytes(l))]
					}
					fl.mu.Unlock()
					gets += float64(total) / float64(len(layers))
					ready += sum.Seconds() / float64(n)
				}
				b.ReportMetric(gets/float64(b.N), "GETs/layer")
				b.ReportMetric(ready/float64(b.N)*1000, "ms-to-ready/executor")
			})
		}
	}
}
