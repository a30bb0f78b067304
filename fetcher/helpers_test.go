package fetcher_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/registry/credential"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/memory"
)

const (
	user     = "alice"
	password = "s3cr3t-PASSWORD"
)

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// env is a fetcher over a counted in-process registry whose "private/"
// repositories require basic auth as alice, and which can be taken down.
type env struct {
	host     string
	proxy    *registrytest.Proxy
	pushAuth authn.Authenticator
	counter  *registrytest.Counter
	down     atomic.Bool
	clock    *clock
	reg      *prometheus.Registry
	top      *memory.Tier
	bottom   *memory.Tier
	stack    *tiers.Stack
	client   *registry.Client
	f        *fetcher.Fetcher
}

type envOpts struct {
	tagTTL, proofTTL time.Duration
	bottom           blob.Tier             // default: a second memory tier
	host             string                // use this registry instead of a new in-process one
	counter          *registrytest.Counter // what counts requests to host
	pushAuth         authn.Authenticator   // credentials for pushing to host
	proxy            *registrytest.Proxy   // the proxy in front of host, if any
}

// registries runs fn against the in-process registry and against the real
// distribution registry (behind a counting proxy), as subtests.
func registries(t *testing.T, fn func(t *testing.T, o envOpts)) {
	t.Run("inprocess", func(t *testing.T) { fn(t, envOpts{}) })
	t.Run("distribution", func(t *testing.T) {
		dist := registrytest.StartDistribution(t, registrytest.DistributionOptions{})
		p := registrytest.NewProxy(t, dist.Host)
		fn(t, envOpts{host: p.Host(), counter: &p.Counter, proxy: p})
	})
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	e := &env{counter: &registrytest.Counter{}, clock: &clock{now: time.Now()}, reg: prometheus.NewRegistry()}
	e.host, e.pushAuth, e.proxy = o.host, o.pushAuth, o.proxy
	if o.counter != nil {
		e.counter = o.counter
	}
	if e.host == "" {
		e.host = registrytest.InProcess(t, e.counter.Wrap, basicAuthFor("/v2/private/"), e.downSwitch)
	}
	var err error
	e.client, err = registry.New(registry.Config{
		AllowCIDRs:  []string{"127.0.0.0/8"},
		MaxAttempts: 2,
		Sleep:       func(context.Context, time.Duration) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	e.top = memory.New(memory.Config{Name: "memory"})
	t.Cleanup(func() { e.top.Close() })
	bottom := o.bottom
	if bottom == nil {
		e.bottom = memory.New(memory.Config{Name: "bottom"})
		t.Cleanup(func() { e.bottom.Close() })
		bottom = e.bottom
	}
	e.stack = tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: e.top}, {Tier: bottom}}})
	cfg := fetcher.DefaultConfig()
	cfg.Store, cfg.Registry, cfg.Now, cfg.Metrics = e.stack, e.client, e.clock.Now, e.reg
	if o.tagTTL != 0 {
		cfg.TagTTL = o.tagTTL
	}
	if o.proofTTL != 0 {
		cfg.ProofTTL = o.proofTTL
	}
	if e.f, err = fetcher.New(cfg); err != nil {
		t.Fatal(err)
	}
	return e
}

// setDown makes the registry answer 503 to everything (or stop doing so).
func (e *env) setDown(down bool) {
	if e.proxy == nil {
		e.down.Store(down)
		return
	}
	if down {
		e.proxy.Inject(registrytest.Fault{Status: 503, Times: 1 << 20})
	} else {
		e.proxy.Clear()
	}
}

// downSwitch answers 503 to everything while e.down is set.
func (e *env) downSwitch(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if e.down.Load() {
			http.Error(w, "down for the test", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// basicAuthFor requires alice's basic auth on paths under prefix (the
// in-process registry has no auth of its own).
func basicAuthFor(prefix string) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, prefix) {
				u, p, ok := r.BasicAuth()
				if !ok || u != user || p != password {
					w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
					http.Error(w, "unauthorized", http.StatusUnauthorized)
					return
				}
			}
			h.ServeHTTP(w, r)
		})
	}
}

func alice() credential.Credential { return credential.Basic("", user, password) }

func aliceAuth() authn.Authenticator {
	return &authn.Basic{Username: user, Password: password}
}

// push pushes img as repoTag and returns its manifest digest.
func (e *env) push(t testing.TB, repoTag string, img v1.Image) blob.Digest {
	t.Helper()
	var auth authn.Authenticator = authn.Anonymous
	if strings.HasPrefix(repoTag, "private/") {
		auth = aliceAuth()
	}
	if e.pushAuth != nil {
		auth = e.pushAuth
	}
	h := registrytest.Push(t, e.host, repoTag, img, auth)
	e.counter.Reset()
	return blob.Digest(h.String())
}

func (e *env) ref(s string) string { return e.host + "/" + s }

// readLayers reads every layer of img to the end and returns the bytes.
func readLayers(ctx context.Context, img *fetcher.Image) ([][]byte, []string, error) {
	var out [][]byte
	var tiersServed []string
	for _, l := range img.Layers() {
		rc, info, err := l.(*fetcher.Layer).OpenInfo(ctx)
		if err != nil {
			return nil, nil, err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return nil, nil, err
		}
		out = append(out, b)
		tiersServed = append(tiersServed, info.Tier)
	}
	return out, tiersServed, nil
}

// requests is the number of registry API requests (not counting pings).
func (e *env) requests() int {
	n := 0
	for _, m := range []string{"GET", "HEAD"} {
		for _, k := range []string{"manifest", "blob", "other"} {
			n += e.counter.Count(m, k)
		}
	}
	return n
}
