package tiers_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/tiertest"
)

// Two callers with different sources (say, two repositories' registry
// clients) that ask for one digest at once share one fill: the origin is
// read once, the blob lands in the stack's tiers, and nobody's bytes are
// wrong.
func TestWithSourceCollapsesAcrossSources(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := tiers.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	top := newMem(t, "top", 0)
	s := tiers.NewStack(tiers.StackConfig{Name: "test", Tiers: []tiers.Entry{{Tier: top}}, Metrics: m})
	want, _ := tiertest.RandomBytes(7, 2<<20)
	srcA := newProbe(newMem(t, "registry", 0))
	srcB := newProbe(newMem(t, "registry", 0))
	d := put(t, srcA.Tier, want)
	put(t, srcB.Tier, want)
	srcA.gate, srcB.gate = make(chan struct{}), make(chan struct{})

	const n = 32
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		src := srcA
		if i%2 == 1 {
			src = srcB
		}
		view := s.WithSource(src, "")
		wg.Go(func() {
			got, _, err := readAll(context.Background(), view, d)
			if err == nil && !bytes.Equal(got, want) {
				err = errors.New("wrong bytes")
			}
			errs[i] = err
		})
	}
	waitFor(t, "all but one caller to join the fill", func() bool {
		return metricValue(t, reg, tiers.MetricCollapsed, map[string]string{"stack": "test"}) == n-1
	})
	close(srcA.gate)
	close(srcB.gate)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("caller %d: %v", i, err)
		}
	}
	if got := srcA.count("Open") + srcB.count("Open"); got != 1 {
		t.Errorf("sources opened %d times in all, want 1", got)
	}
	if !has(t, top, d) {
		t.Error("the stack's tier does not hold the blob after the fill")
	}
}

// A source is only read: writes through the view reach the stack's tiers
// and never the source, and a Local view with a source leaves out shared
// tiers like any Local view.
func TestWithSourceIsReadOnly(t *testing.T) {
	ctx := context.Background()
	local := newMem(t, "local", 0)
	shared := newProbe(newMem(t, "shared", 0))
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: local}, {Tier: shared, Shared: true}}})
	src := newProbe(newMem(t, "registry", 0))
	want := []byte("from the origin")
	d := put(t, src.Tier, want)

	view := s.Local().WithSource(src, "")
	got, info, err := readAll(ctx, view, d)
	if err != nil || !bytes.Equal(got, want) || info.Tier != "registry" {
		t.Fatalf("read through source = %q, %+v, %v", got, info, err)
	}
	if !has(t, local, d) {
		t.Error("local tier not filled from the source")
	}
	if shared.total() != 0 {
		t.Errorf("Local view with a source called the shared tier %d times", shared.total())
	}
	other := []byte("written through the view")
	if err := view.Put(ctx, blob.FromBytes(other), int64(len(other)), bytes.NewReader(other)); err != nil {
		t.Fatalf("Put through source view: %v", err)
	}
	if err := view.PutRef(ctx, blob.RefKey{Namespace: "tag", Name: "x"}, blob.Ref{Digest: d, Size: int64(len(want))}); err != nil {
		t.Fatalf("PutRef through source view: %v", err)
	}
	if err := view.Delete(ctx, d); err != nil {
		t.Fatalf("Delete through source view: %v", err)
	}
	for _, m := range []string{"Put", "PutRef", "Delete", "DeleteRef"} {
		if n := src.count(m); n != 0 {
			t.Errorf("source saw %d %s calls, want 0", n, m)
		}
	}
	if !has(t, src.Tier, d) {
		t.Error("Delete through the view removed the blob from the source")
	}
}

// When no tier holds a blob, the source's answer is the view's: a source
// that is unavailable or refuses the caller is not reported as a miss.
func TestWithSourceErrorIsTheAnswer(t *testing.T) {
	ctx := context.Background()
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: newMem(t, "top", 0)}, {Tier: newMem(t, "bottom", 0)}}})
	d := blob.FromBytes([]byte("nowhere"))
	for _, tc := range []struct {
		desc string
		err  error
	}{
		{"unavailable origin", fmt.Errorf("registry down: %w", blob.ErrUnavailable)},
		{"refusing origin", errBoom},
		{"missing at the origin", fmt.Errorf("registry: %w", blob.ErrNotFound)},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			src := failingSource{Tier: newMem(t, "registry", 0), err: tc.err}
			_, _, err := s.WithSource(src, "").Open(ctx, d)
			if !errors.Is(err, tc.err) {
				t.Fatalf("Open = %v, want the source's error %v", err, tc.err)
			}
		})
	}
}

// failingSource is a real tier whose Open fails with err.
type failingSource struct {
	blob.Tier
	err error
}

func (f failingSource) Open(context.Context, blob.Digest) (io.ReadCloser, blob.Info, error) {
	return nil, blob.Info{}, f.err
}

// An origin view never serves a cached copy: a source that lacks the blob
// fails even though a tier holds it, and one that has it serves it itself.
func TestWithOriginReadsOnlyTheOrigin(t *testing.T) {
	ctx := context.Background()
	top := newMem(t, "top", 0)
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top}}})
	want, _ := tiertest.RandomBytes(3, 256<<10)
	d := put(t, top, want)

	empty := newProbe(newMem(t, "registry", 0))
	if _, _, err := readAll(ctx, s.WithOrigin(empty, "evil.example/app", nil, nil), d); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("origin without the blob: %v, want not found (the cached copy must not be served)", err)
	}
	if _, err := s.WithOrigin(empty, "evil.example/app", nil, nil).Stat(ctx, d); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Stat through an origin without the blob: %v, want not found", err)
	}
	holder := newProbe(newMem(t, "registry", 0))
	put(t, holder.Tier, want)
	got, info, err := readAll(ctx, s.WithOrigin(holder, "good.example/app", nil, nil), d)
	if err != nil || !bytes.Equal(got, want) || info.Tier != "registry" || holder.count("Open") != 1 {
		t.Fatalf("origin with the blob: %v, tier %q, %d opens", err, info.Tier, holder.count("Open"))
	}
}

// Fills of origin views with different keys never join: while one origin's
// fill is in flight, another origin that lacks the blob still fails.
func TestWithOriginFillsDoNotCrossOrigins(t *testing.T) {
	ctx := context.Background()
	top := newMem(t, "top", 0)
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top}}})
	want, _ := tiertest.RandomBytes(4, 1<<20)
	good := newProbe(newMem(t, "registry", 0))
	d := put(t, good.Tier, want)
	good.gate, good.entered = make(chan struct{}), make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		got, _, err := readAll(ctx, s.WithOrigin(good, "good.example/app", nil, nil), d)
		if err == nil && !bytes.Equal(got, want) {
			err = errors.New("wrong bytes")
		}
		done <- err
	}()
	<-good.entered // the good origin's fill is in flight
	evil := newProbe(newMem(t, "registry", 0))
	_, _, err := readAll(ctx, s.WithOrigin(evil, "evil.example/app", nil, nil), d)
	close(good.gate)
	if !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("other origin during a fill: %v, want not found", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("good origin: %v", err)
	}
	// The same origin's callers do collapse.
	if _, _, err := readAll(ctx, s.WithOrigin(good, "good.example/app", nil, nil), d); err != nil || good.count("Open") != 2 {
		t.Fatalf("second read from the good origin: %v (%d opens; origin views always read the origin)", err, good.count("Open"))
	}
}

// An origin fill that starts after an earlier one proved the blob reads the
// tiers: proven is asked inside the flight.
func TestWithOriginProvenInsideTheFill(t *testing.T) {
	ctx := context.Background()
	top := newMem(t, "top", 0)
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top}}})
	want, _ := tiertest.RandomBytes(5, 128<<10)
	src := newProbe(newMem(t, "registry", 0))
	d := put(t, src.Tier, want)
	var proven atomic.Bool
	isProven := func(context.Context, blob.Digest) bool { return proven.Load() }
	filled := func(_ context.Context, fd blob.Digest) {
		if fd == d && has(t, top, d) { // called after the tiers committed
			proven.Store(true)
		}
	}
	if _, _, err := readAll(ctx, s.WithOrigin(src, "r.example/app", isProven, filled), d); err != nil {
		t.Fatal(err)
	}
	if !proven.Load() {
		t.Fatal("filled was not called after the tiers committed the blob")
	}
	got, info, err := readAll(ctx, s.WithOrigin(src, "r.example/app", isProven, filled), d)
	if err != nil || !bytes.Equal(got, want) || src.count("Open") != 1 || info.Tier != "top" {
		t.Fatalf("second fill: %v, served by %q, source opened %d times; want the tier, 1 open", err, info.Tier, src.count("Open"))
	}
}
