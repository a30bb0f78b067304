package registry_test

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/registry"
)

// sleeps records the waits the client asks for instead of sleeping.
type sleeps struct {
	mu sync.Mutex
	d  []time.Duration
}

func (s *sleeps) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.d = append(s.d, d)
	s.mu.Unlock()
	return ctx.Err()
}

func (s *sleeps) all() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.d...)
}

type rig struct {
	c      *registry.Client
	reg    *prometheus.Registry
	sleeps *sleeps
}

// newClient returns a client allowed to reach loopback, with no proxy,
// recorded sleeps and its own metrics registry. mod may adjust the config.
func newClient(t *testing.T, mod func(*registry.Config)) *rig {
	t.Helper()
	r := &rig{reg: prometheus.NewRegistry(), sleeps: &sleeps{}}
	cfg := registry.Config{
		AllowCIDRs: []string{"127.0.0.0/8"},
		Proxy:      registry.NoProxy,
		Metrics:    r.reg,
		Sleep:      r.sleeps.sleep,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := registry.New(cfg)
	if err != nil {
		t.Fatalf("registry.New: %v", err)
	}
	r.c = c
	return r
}

// metric sums the samples of family name whose labels include want.
func (r *rig) metric(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	fams, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if labelsMatch(m, want) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// dump renders every metric sample with its labels.
func (r *rig) dump(t *testing.T) string {
	t.Helper()
	fams, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			b.WriteString(f.GetName())
			for _, l := range m.GetLabel() {
				b.WriteString(" " + l.GetName() + "=" + l.GetValue())
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	for k, v := range want {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == k && l.GetValue() == v {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func mustRef(t *testing.T, s string) registry.Reference {
	t.Helper()
	r, err := registry.ParseReference(s)
	if err != nil {
		t.Fatalf("ParseReference(%q): %v", s, err)
	}
	return r
}

// readBlob opens and reads a blob fully.
func readBlob(t *testing.T, c *registry.Client, ref registry.Reference, d blob.Digest, size int64) ([]byte, error) {
	t.Helper()
	rc, err := c.Blob(context.Background(), ref.Repo(), d, size, nil)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}
