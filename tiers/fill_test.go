package tiers_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/tiertest"
)

// tierSource serves one blob of a real tier (often a probe) as a
// tiers.Source, named "registry".
type tierSource struct {
	tier blob.Tier
	d    blob.Digest
}

func (s tierSource) Name() string { return "registry" }

func (s tierSource) Open(ctx context.Context) (io.ReadCloser, error) {
	rc, _, err := s.tier.Open(ctx, s.d)
	return rc, err
}

// readStream reads a stream that open returns to the end.
func readStream(open func() (io.ReadCloser, blob.Info, error)) ([]byte, blob.Info, error) {
	rc, info, err := open()
	if err != nil {
		return nil, info, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return b, info, err
}

// fillAll reads d to the end through s.Fill with key and src's copy.
func fillAll(ctx context.Context, s *tiers.Stack, key string, src blob.Tier, d blob.Digest, size int) ([]byte, blob.Info, error) {
	return readStream(func() (io.ReadCloser, blob.Info, error) {
		return s.Fill(ctx, key, d, int64(size), tierSource{src, d})
	})
}

// openOrFillAll reads d to the end through s.OpenOrFill.
func openOrFillAll(ctx context.Context, s *tiers.Stack, key string, src blob.Tier, d blob.Digest, size int) ([]byte, blob.Info, error) {
	return readStream(func() (io.ReadCloser, blob.Info, error) {
		return s.OpenOrFill(ctx, key, d, int64(size), tierSource{src, d})
	})
}

// Concurrent Fills of one digest with one key share one read of the
// source, whoever's source object it is: the blob lands in the tiers and
// every caller gets the right bytes.
func TestFillCollapsesPerKey(t *testing.T) {
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
		wg.Go(func() {
			got, _, err := fillAll(context.Background(), s, "r.example/app", src, d, len(want))
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
	if n := metricValue(t, reg, tiers.MetricRequests, map[string]string{"tier": "registry", "op": "open", "result": "hit"}); n != 1 {
		t.Errorf("source opens measured: %v, want 1", n)
	}
}

// A Fill through a Local view fills the local tiers and never touches a
// shared one; the bytes are reported as the source's.
func TestFillLocalNeverTouchesShared(t *testing.T) {
	ctx := context.Background()
	local := newMem(t, "local", 0)
	shared := newProbe(newMem(t, "shared", 0))
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: local}, {Tier: shared, Shared: true}}})
	src := newMem(t, "registry", 0)
	want := []byte("from the origin")
	d := put(t, src, want)

	got, info, err := fillAll(ctx, s.Local(), "r.example/app", src, d, len(want))
	if err != nil || !bytes.Equal(got, want) || info.Tier != "registry" {
		t.Fatalf("Fill = %q, %+v, %v", got, info, err)
	}
	if !has(t, local, d) {
		t.Error("local tier not filled from the source")
	}
	if shared.total() != 0 {
		t.Errorf("a Fill through the Local view called the shared tier %d times", shared.total())
	}
}

// When no tier serves a blob, the source's answer is the caller's: a
// source that is unavailable or refuses the caller is not reported as a
// miss, by Fill or by OpenOrFill.
func TestFillSourceErrorIsTheAnswer(t *testing.T) {
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
			src := failingSource{err: tc.err}
			if _, _, err := s.Fill(ctx, "k", d, 7, src); !errors.Is(err, tc.err) {
				t.Errorf("Fill = %v, want the source's error %v", err, tc.err)
			}
			if _, _, err := s.OpenOrFill(ctx, "k", d, 7, src); !errors.Is(err, tc.err) {
				t.Errorf("OpenOrFill = %v, want the source's error %v", err, tc.err)
			}
		})
	}
}

// failingSource is a source whose Open fails with err.
type failingSource struct{ err error }

func (failingSource) Name() string                                  { return "registry" }
func (f failingSource) Open(context.Context) (io.ReadCloser, error) { return nil, f.err }

// Bad input is refused before any tier or source is asked.
func TestFillInvalidInput(t *testing.T) {
	ctx := context.Background()
	top := newProbe(newMem(t, "top", 0))
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top}}})
	good := blob.FromBytes([]byte("x"))
	tests := []struct {
		desc    string
		d       blob.Digest
		size    int64
		src     tiers.Source
		wantErr error
	}{
		{"malformed digest", "sha256:../../etc/passwd", 1, failingSource{errBoom}, blob.ErrInvalidDigest},
		{"negative size", good, -1, failingSource{errBoom}, blob.ErrInvalidDigest},
		{"no source", good, 1, nil, nil},
	}
	for _, tt := range tests {
		for name, call := range map[string]func() (io.ReadCloser, blob.Info, error){
			"Fill":       func() (io.ReadCloser, blob.Info, error) { return s.Fill(ctx, "k", tt.d, tt.size, tt.src) },
			"OpenOrFill": func() (io.ReadCloser, blob.Info, error) { return s.OpenOrFill(ctx, "k", tt.d, tt.size, tt.src) },
		} {
			_, _, err := call()
			if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) || errors.Is(err, errBoom) {
				t.Errorf("%s: %s = %v, want a refusal (%v) before the source is asked", tt.desc, name, err, tt.wantErr)
			}
		}
	}
	if n := top.total(); n != 0 {
		t.Errorf("invalid input reached the tier %d times", n)
	}
}

// A Fill never serves a cached copy: a source that lacks the blob fails
// even though a tier holds it, and one that has it serves it itself.
func TestFillReadsOnlyItsSource(t *testing.T) {
	ctx := context.Background()
	top := newMem(t, "top", 0)
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top}}})
	want, _ := tiertest.RandomBytes(3, 256<<10)
	d := put(t, top, want)

	empty := newProbe(newMem(t, "registry", 0))
	if _, _, err := fillAll(ctx, s, "evil.example/app", empty, d, len(want)); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("source without the blob: %v, want not found (the cached copy must not be served)", err)
	}
	holder := newProbe(newMem(t, "registry", 0))
	put(t, holder.Tier, want)
	got, info, err := fillAll(ctx, s, "good.example/app", holder, d, len(want))
	if err != nil || !bytes.Equal(got, want) || info.Tier != "registry" || holder.count("Open") != 1 {
		t.Fatalf("source with the blob: %v, tier %q, %d opens", err, info.Tier, holder.count("Open"))
	}
}

// Fills with different keys never join: while one key's fill is in
// flight, a Fill with another key whose source lacks the blob still fails,
// and the first key's source is read once per Fill that does not overlap.
func TestFillsDoNotCrossKeys(t *testing.T) {
	ctx := context.Background()
	top := newMem(t, "top", 0)
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top}}})
	want, _ := tiertest.RandomBytes(4, 1<<20)
	good := newProbe(newMem(t, "registry", 0))
	d := put(t, good.Tier, want)
	good.gate, good.entered = make(chan struct{}), make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		got, _, err := fillAll(ctx, s, "good.example/app", good, d, len(want))
		if err == nil && !bytes.Equal(got, want) {
			err = errors.New("wrong bytes")
		}
		done <- err
	}()
	<-good.entered // the good key's fill is in flight
	evil := newProbe(newMem(t, "registry", 0))
	_, _, err := fillAll(ctx, s, "evil.example/app", evil, d, len(want))
	close(good.gate)
	if !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("other key during a fill: %v, want not found", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("good key: %v", err)
	}
	if _, _, err := fillAll(ctx, s, "good.example/app", good, d, len(want)); err != nil || good.count("Open") != 2 {
		t.Fatalf("second Fill of the good key: %v (%d opens; a Fill that joins nothing reads its source)", err, good.count("Open"))
	}
}

// OpenOrFill reads the tiers first, and goes on from the source when the
// only tier that holds the blob fails mid-stream: the caller gets one
// correct stream, and the source's bytes are written into the tier above.
func TestOpenOrFillFailsOverToTheSource(t *testing.T) {
	ctx := context.Background()
	top := newMem(t, "top", 0)
	bottom := tiertest.NewFaulty(newMem(t, "bottom", 0))
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top}, {Tier: bottom}}})
	want, _ := tiertest.RandomBytes(5, 1<<20)
	d := put(t, bottom, want)
	src := newProbe(newMem(t, "registry", 0))
	put(t, src.Tier, want)

	// A hit in the tiers does not ask the source.
	got, info, err := openOrFillAll(ctx, s, "r.example/app", src, d, len(want))
	if err != nil || !bytes.Equal(got, want) || info.Tier != "bottom" || src.count("Open") != 0 {
		t.Fatalf("hit below: %v, tier %q, source opened %d times", err, info.Tier, src.count("Open"))
	}
	if err := top.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	bottom.Inject(d, tiertest.Fault{Kind: tiertest.FaultBreak, At: 300 << 10})
	got, _, err = openOrFillAll(ctx, s, "r.example/app", src, d, len(want))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("bottom breaking mid-read: %d bytes, %v; want the blob from the source", len(got), err)
	}
	if n := src.count("Open"); n != 1 {
		t.Errorf("source opened %d times, want 1", n)
	}
	if !has(t, top, d) {
		t.Error("the top tier was not filled from the source")
	}
}

// An OpenOrFill led through a source that lacks the blob is not an answer
// for a caller whose own source has it: that caller retries with its own.
func TestOpenOrFillSourceMissIsNotSharedAnswer(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, _ := tiers.NewMetrics(reg)
	top := newMem(t, "top", 0)
	s := tiers.NewStack(tiers.StackConfig{Name: "test", Tiers: []tiers.Entry{{Tier: top}}, Metrics: m})
	want := []byte("only in source a")
	srcA := newProbe(newMem(t, "a", 0))
	srcB := newProbe(newMem(t, "b", 0))
	d := put(t, srcA.Tier, want)
	srcB.gate = make(chan struct{})
	srcB.entered = make(chan struct{}, 1)

	bErr := make(chan error, 1)
	go func() {
		_, _, err := openOrFillAll(context.Background(), s, "", srcB, d, len(want))
		bErr <- err
	}()
	<-srcB.entered
	aRes := make(chan error, 1)
	go func() {
		got, _, err := openOrFillAll(context.Background(), s, "", srcA, d, len(want))
		if err == nil && !bytes.Equal(got, want) {
			err = errors.New("wrong bytes")
		}
		aRes <- err
	}()
	waitFor(t, "a's caller to join b's fill", func() bool { return metricValue(t, reg, tiers.MetricCollapsed, nil) == 1 })
	close(srcB.gate)
	if err := <-bErr; !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("caller of source b = %v, want ErrNotFound", err)
	}
	if err := <-aRes; err != nil {
		t.Errorf("caller of source a = %v, want its blob", err)
	}
}

// An OpenOrFill led through one key's source is never joined by a caller
// of another key: a registry that stalls holds up its own callers only.
func TestOpenOrFillDoesNotCollapseAcrossKeys(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, _ := tiers.NewMetrics(reg)
	top := newMem(t, "top", 0)
	s := tiers.NewStack(tiers.StackConfig{Name: "test", Tiers: []tiers.Entry{{Tier: top}}, Metrics: m})
	want := []byte("in both sources; b's stalls")
	srcA := newProbe(newMem(t, "a", 0))
	srcB := newProbe(newMem(t, "b", 0))
	d := put(t, srcA.Tier, want)
	put(t, srcB.Tier, want)
	srcB.gate = make(chan struct{})
	srcB.entered = make(chan struct{}, 1)
	defer close(srcB.gate)

	go openOrFillAll(context.Background(), s, "registry-b/repo", srcB, d, len(want))
	<-srcB.entered // b's fill is in flight, held by its source
	got, _, err := openOrFillAll(context.Background(), s, "registry-a/repo", srcA, d, len(want))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("caller of source a: %q, %v (it waited for b's fill?)", got, err)
	}
	if n := metricValue(t, reg, tiers.MetricCollapsed, nil); n != 0 {
		t.Errorf("%v collapsed reads across source keys, want 0", n)
	}
}
