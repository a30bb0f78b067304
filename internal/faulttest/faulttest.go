// Package faulttest builds, for tests, the tier stack a host builds
// (memory over disk over a shared REAPI tier, the registry as the last
// source) with a fault injector in front of every part: the memory tier
// behind tiertest.Faulty, the REAPI server behind reapitest's injector, the
// in-process registry behind registrytest's proxy. The fault matrices of
// the fetcher and of the materializers run on it.
package faulttest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/internal/reapitest"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/disk"
	"github.com/strata-oci/strata/tiers/memory"
	"github.com/strata-oci/strata/tiers/reapi"
	"github.com/strata-oci/strata/tiers/tiertest"
)

// Tier names, as strata.Open names them.
const (
	Memory = "memory"
	Disk   = "disk"
	Remote = "remote"
)

// Stack is the faulty tier stack and a fetcher over it.
type Stack struct {
	Reg     *prometheus.Registry // the stack's metrics (and whatever a test adds)
	Mem     *tiertest.Faulty
	Disk    *disk.Tier
	Remote  *reapi.Tier
	Srv     *reapitest.Server
	Proxy   *registrytest.Proxy // in front of the registry
	Stack   *tiers.Stack
	Fetcher *fetcher.Fetcher

	diskRoot string
}

// New builds the stack with the disk tier under diskRoot and the registry
// behind wrap (its auth, for instance). Everything closes in t.Cleanup.
func New(t *testing.T, diskRoot string, wrap func(http.Handler) http.Handler) *Stack {
	t.Helper()
	ctx := context.Background()
	s := &Stack{Reg: prometheus.NewRegistry(), diskRoot: diskRoot}
	s.Mem = tiertest.NewFaulty(memory.New(memory.Config{Name: Memory}))
	var err error
	if s.Disk, err = disk.Open(disk.Config{Root: diskRoot, Name: Disk}); err != nil {
		t.Fatal(err)
	}
	s.Srv = reapitest.NewServer(t, reapitest.Options{})
	s.Remote, err = reapi.New(ctx, reapi.Config{
		Endpoint: s.Srv.Endpoint(), Instance: reapitest.Instance, Name: Remote,
		CallTimeout:  time.Minute,
		StallTimeout: 200 * time.Millisecond, // bounds the stall rows; asserts nothing about speed
		Retries:      reapi.RetryConfig{BackoffBase: time.Millisecond, BackoffMax: 5 * time.Millisecond},
		Breaker:      reapi.BreakerConfig{Failures: -1},
	})
	if err != nil {
		t.Fatal(err)
	}
	m, err := tiers.NewMetrics(s.Reg)
	if err != nil {
		t.Fatal(err)
	}
	s.Stack = tiers.NewStack(tiers.StackConfig{Name: "strata", Metrics: m, Tiers: []tiers.Entry{
		{Tier: s.Mem}, {Tier: s.Disk}, {Tier: s.Remote, Shared: true},
	}})
	t.Cleanup(func() { s.Stack.Close() })

	s.Proxy = registrytest.NewProxy(t, registrytest.InProcess(t, wrap))
	client, err := registry.New(registry.Config{
		AllowCIDRs:  []string{"127.0.0.0/8"},
		MaxAttempts: 2,
		Sleep:       func(context.Context, time.Duration) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := fetcher.DefaultConfig()
	cfg.Store, cfg.Registry, cfg.Metrics = s.Stack, client, prometheus.NewRegistry()
	if s.Fetcher, err = fetcher.New(cfg); err != nil {
		t.Fatal(err)
	}
	return s
}

// RequireEverywhere fails the test unless every tier holds d.
func (s *Stack) RequireEverywhere(t *testing.T, d blob.Digest) {
	t.Helper()
	for _, tier := range []blob.Tier{s.Mem, s.Disk, s.Remote} {
		if _, err := tier.Stat(context.Background(), d); err != nil {
			t.Fatalf("tier %s lacks %s: %v", tier.Name(), d, err)
		}
	}
}

// Counter returns the sum of the counter series name whose labels include
// labels.
func (s *Stack) Counter(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := s.Reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelsMatch(m, labels) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

// Opens counts the Opens of d in tier (for disk and remote: all Opens
// through the stack; a matrix serves its other blobs from memory).
func (s *Stack) Opens(t *testing.T, d blob.Digest, tier string) float64 {
	if tier == Memory {
		return float64(s.Mem.Opens(d))
	}
	return s.Counter(t, tiers.MetricRequests, map[string]string{"tier": tier, "op": "open"})
}

// Remove takes d out of the tiers above the one named above, so that tier
// serves it.
func (s *Stack) Remove(t *testing.T, d blob.Digest, above string) {
	t.Helper()
	ctx := context.Background()
	for _, name := range []string{Memory, Disk, Remote} {
		if name == above {
			return
		}
		switch name {
		case Memory:
			if err := s.Mem.Delete(ctx, d); err != nil {
				t.Fatal(err)
			}
		case Disk:
			if err := s.Disk.Delete(ctx, d); err != nil {
				t.Fatal(err)
			}
		case Remote:
			s.Srv.Lose(d.Encoded())
		}
	}
}

// BlobFile is the disk tier's file of d.
func (s *Stack) BlobFile(d blob.Digest) string {
	h := d.Encoded()
	return filepath.Join(s.diskRoot, "blobs", "sha256", h[:2], h)
}

// WaitRepaired waits until the stack has repaired the bad copy in tier.
func (s *Stack) WaitRepaired(t *testing.T, tier string) {
	t.Helper()
	repairs := func(result string) float64 {
		return s.Counter(t, tiers.MetricRepairs, map[string]string{"tier": tier, "result": result})
	}
	deadline := time.Now().Add(20 * time.Second) // only keeps a broken test from hanging
	for repairs("ok") < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the bad copy in %s was not repaired (repairs: ok %v, error %v, refused %v)", tier,
				repairs("ok"), repairs("error"), repairs("refused"))
		}
		time.Sleep(time.Millisecond)
	}
}

// RequireHealed fails the test if any tier holds wrong bytes for d (want
// is the blob), or if the memory or disk tier lacks it: after a fault,
// the local tiers hold the blob again and no bad copy is left. It clears
// d from the memory tier first, so that the disk tier's copy is read too.
// The remote tier may lack d, or still fail to read it (its row's fault
// may still be armed), but must not serve wrong bytes as good ones.
func (s *Stack) RequireHealed(t *testing.T, d blob.Digest, want []byte) {
	t.Helper()
	ctx := context.Background()
	s.Mem.Clear(d)
	for _, tier := range []blob.Tier{s.Mem, s.Disk, s.Remote} {
		rc, _, err := tier.Open(ctx, d)
		if err != nil {
			if tier != blob.Tier(s.Remote) {
				t.Errorf("tier %s lacks the blob after the calls: %v", tier.Name(), err)
			}
			continue
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		switch {
		case err == nil && !bytes.Equal(b, want):
			t.Errorf("tier %s served wrong bytes with io.EOF", tier.Name())
		case errors.Is(err, blob.ErrMismatch):
			t.Errorf("tier %s holds a bad copy: %v", tier.Name(), err)
		case err != nil && tier != blob.Tier(s.Remote):
			t.Errorf("tier %s: read: %v", tier.Name(), err)
		}
	}
}
