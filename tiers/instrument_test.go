package tiers_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers"
)

func TestInstrumentCounts(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := tiers.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	inner := newProbe(newMem(t, "mem", 1024))
	tier := tiers.Instrument(inner, m)
	ctx := context.Background()
	content := bytes.Repeat([]byte("x"), 100)
	d := blob.FromBytes(content)
	missing := blob.FromBytes([]byte("missing"))
	big := bytes.Repeat([]byte("y"), 2048)
	k := blob.RefKey{Namespace: "n", Name: "k"}

	tier.Stat(ctx, missing)                                         // stat miss
	tier.Put(ctx, d, int64(len(content)), bytes.NewReader(content)) // put ok, 100 bytes
	tier.Put(ctx, blob.FromBytes(big), 2048, bytes.NewReader(big))  // put declined
	tier.Put(ctx, missing, 3, bytes.NewReader([]byte("bad")))       // put mismatch
	tier.Stat(ctx, d)                                               // stat hit
	tier.Stat(ctx, "sha256:nope")                                   // stat invalid
	if _, _, err := tier.Open(ctx, missing); err == nil {           // open miss
		t.Fatal("Open of a missing blob succeeded")
	}
	rc, info, err := tier.Open(ctx, d) // open hit, read 10 bytes only
	if err != nil || info.Tier != "mem" {
		t.Fatalf("Open = %+v, %v", info, err)
	}
	io.ReadFull(rc, make([]byte, 10))
	rc.Close()
	tier.PutRef(ctx, k, blob.Ref{Digest: d, Size: 100})
	tier.GetRef(ctx, k)
	tier.DeleteRef(ctx, k)
	tier.DeleteRef(ctx, k)
	tier.Walk(ctx, func(blob.Info) error { return nil })
	tier.WalkRefs(ctx, "", func(blob.RefKey, blob.Ref) error { return nil })
	tier.Delete(ctx, d)
	tier.Delete(ctx, d)

	tests := []struct {
		desc   string
		metric string
		labels map[string]string
		want   float64
	}{
		{"stat miss", tiers.MetricRequests, map[string]string{"tier": "mem", "op": "stat", "result": "miss"}, 1},
		{"stat hit", tiers.MetricRequests, map[string]string{"tier": "mem", "op": "stat", "result": "hit"}, 1},
		{"stat invalid", tiers.MetricRequests, map[string]string{"tier": "mem", "op": "stat", "result": "invalid"}, 1},
		{"put ok", tiers.MetricRequests, map[string]string{"op": "put", "result": "ok"}, 1},
		{"put declined", tiers.MetricRequests, map[string]string{"op": "put", "result": "declined"}, 1},
		{"put mismatch", tiers.MetricRequests, map[string]string{"op": "put", "result": "mismatch"}, 1},
		{"open miss", tiers.MetricRequests, map[string]string{"op": "open", "result": "miss"}, 1},
		{"open hit", tiers.MetricRequests, map[string]string{"op": "open", "result": "hit"}, 1},
		{"bytes read as read, not at open", tiers.MetricReadBytes, map[string]string{"tier": "mem"}, 10},
		{"bytes written: the stored blob and the mismatched source", tiers.MetricWriteBytes, map[string]string{"tier": "mem"}, 103},
		{"put_ref ok", tiers.MetricRequests, map[string]string{"op": "put_ref", "result": "ok"}, 1},
		{"get_ref hit", tiers.MetricRequests, map[string]string{"op": "get_ref", "result": "hit"}, 1},
		{"delete_ref ok", tiers.MetricRequests, map[string]string{"op": "delete_ref", "result": "ok"}, 1},
		{"delete_ref miss", tiers.MetricRequests, map[string]string{"op": "delete_ref", "result": "miss"}, 1},
		{"walk", tiers.MetricRequests, map[string]string{"op": "walk", "result": "ok"}, 1},
		{"walk_refs", tiers.MetricRequests, map[string]string{"op": "walk_refs", "result": "ok"}, 1},
		{"delete ok", tiers.MetricRequests, map[string]string{"op": "delete", "result": "ok"}, 1},
		{"delete miss", tiers.MetricRequests, map[string]string{"op": "delete", "result": "miss"}, 1},
		{"latency of every stat", tiers.MetricDuration, map[string]string{"tier": "mem", "op": "stat"}, 3},
		{"latency of every put", tiers.MetricDuration, map[string]string{"op": "put"}, 3},
		{"no reader errors", tiers.MetricReadErrors, nil, 0},
	}
	for _, tt := range tests {
		if got := metricValue(t, reg, tt.metric, tt.labels); got != tt.want {
			t.Errorf("%s: %s%v = %v, want %v", tt.desc, tt.metric, tt.labels, got, tt.want)
		}
	}
	// Every operation reached the inner tier exactly once per call.
	if n := inner.count("Stat"); n != 3 {
		t.Errorf("inner Stat called %d times, want 3", n)
	}
}

func TestInstrumentReaderErrors(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, _ := tiers.NewMetrics(reg)
	inner := newProbe(newMem(t, "rot", 0))
	content := bytes.Repeat([]byte("z"), 5000)
	d := put(t, inner.Tier, content)
	inner.corrupt, inner.verify = true, true
	tier := tiers.Instrument(inner, m)

	rc, _, err := tier.Open(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, rc)
	rc.Close()
	if !errors.Is(err, blob.ErrMismatch) {
		t.Fatalf("read of a corrupt blob = %v", err)
	}
	// A failed reader keeps failing; the error is counted once.
	rc.Read(make([]byte, 1))
	if got := metricValue(t, reg, tiers.MetricReadErrors, map[string]string{"tier": "rot", "result": "mismatch"}); got != 1 {
		t.Errorf("reader mismatch errors = %v, want 1", got)
	}
	if got := metricValue(t, reg, tiers.MetricReadBytes, map[string]string{"tier": "rot"}); got != float64(n) {
		t.Errorf("bytes read = %v, want %d", got, n)
	}

	// Cancellation mid-read is counted as canceled.
	inner.corrupt = false
	ctx, cancel := context.WithCancel(context.Background())
	rc, _, err = tier.Open(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	_, err = io.Copy(io.Discard, rc)
	rc.Close()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("read after cancel = %v", err)
	}
	if got := metricValue(t, reg, tiers.MetricReadErrors, map[string]string{"result": "canceled"}); got != 1 {
		t.Errorf("reader canceled errors = %v, want 1", got)
	}
}

func TestNewMetricsRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := tiers.NewMetrics(reg); err != nil {
		t.Fatalf("first NewMetrics = %v", err)
	}
	if _, err := tiers.NewMetrics(reg); err == nil {
		t.Errorf("second NewMetrics on one registry succeeded, want an error")
	}
	// A failed registration leaves the registry as it was: the first set
	// is still there and a fresh registry takes a full set.
	fresh := prometheus.NewRegistry()
	if _, err := tiers.NewMetrics(fresh); err != nil {
		t.Errorf("NewMetrics on a fresh registry = %v", err)
	}
	if _, err := tiers.NewMetrics(nil); err != nil {
		t.Errorf("NewMetrics(nil) = %v", err)
	}
	tier := newMem(t, "m", 0)
	if got := tiers.Instrument(tier, nil); got != blob.Tier(tier) {
		t.Errorf("Instrument(t, nil) did not return t")
	}
}

func TestStackMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, _ := tiers.NewMetrics(reg)
	top := newMem(t, "top", 1<<20)
	bottom := newMem(t, "bottom", 0)
	s := tiers.NewStack(tiers.StackConfig{Name: "s", Tiers: []tiers.Entry{{Tier: top}, {Tier: bottom}}, Metrics: m})
	ctx := context.Background()
	small := put(t, bottom, []byte("small"))
	bigB := bytes.Repeat([]byte("b"), 2<<20)
	big := put(t, bottom, bigB)

	for range 2 {
		if _, _, err := readAll(ctx, s, small); err != nil {
			t.Fatal(err)
		}
		if _, _, err := readAll(ctx, s, big); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		desc   string
		metric string
		labels map[string]string
		want   float64
	}{
		{"small filled into top once", tiers.MetricWriteBacks, map[string]string{"stack": "s", "tier": "top", "result": "ok"}, 1},
		{"big declined by top once, then not offered", tiers.MetricWriteBacks, map[string]string{"stack": "s", "tier": "top", "result": "declined"}, 1},
		// Misses at top: each fill is a fast-path probe plus the flight's
		// re-check (small once, big twice).
		{"top open misses", tiers.MetricRequests, map[string]string{"tier": "top", "op": "open", "result": "miss"}, 6},
		{"top open hit (second small read)", tiers.MetricRequests, map[string]string{"tier": "top", "op": "open", "result": "hit"}, 1},
		{"bottom opens", tiers.MetricRequests, map[string]string{"tier": "bottom", "op": "open", "result": "hit"}, 3},
		{"bytes served by bottom", tiers.MetricReadBytes, map[string]string{"tier": "bottom"}, float64(5 + 2*len(bigB))},
		{"bytes written into top", tiers.MetricWriteBytes, map[string]string{"tier": "top"}, 5},
	}
	for _, tt := range tests {
		if got := metricValue(t, reg, tt.metric, tt.labels); got != tt.want {
			t.Errorf("%s: %s%v = %v, want %v", tt.desc, tt.metric, tt.labels, got, tt.want)
		}
	}
	for _, e := range s.Tiers() {
		if e.Tier == blob.Tier(top) || e.Tier == blob.Tier(bottom) {
			t.Errorf("Tiers() returned the bare tier %q; want it instrumented", e.Tier.Name())
		}
	}
}
