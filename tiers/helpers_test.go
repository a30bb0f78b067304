package tiers_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers/memory"
)

// newMem returns a memory tier closed at the end of the test.
func newMem(t testing.TB, name string, maxBlob int64) *memory.Tier {
	tier := memory.New(memory.Config{Name: name, MaxBlob: maxBlob})
	t.Cleanup(func() { tier.Close() })
	return tier
}

// probe wraps a real tier, counts every call by method and injects faults
// at the seams the stack tests need. It is test code: the behaviour under
// test is the stack's, the storage is a real tier.
type probe struct {
	blob.Tier
	calls sync.Map // method -> *atomic.Int64

	openReaders atomic.Int64 // readers returned by Open and not yet closed

	// unavailable makes every method fail with blob.ErrUnavailable.
	unavailable bool
	// failOpens makes the first failOpens Opens fail with errBoom.
	failOpens atomic.Int64
	// corrupt flips the first byte of what Open serves; verify says
	// whether the served reader still verifies (as a disk tier's does).
	corrupt, verify bool
	// gate, if set, blocks every Open until it is closed, after signalling
	// entered (if set) once per Open.
	gate    chan struct{}
	entered chan struct{}
	// afterOpen, if set, is called with the outcome of every Open of the
	// wrapped tier before it is returned: a seam to hold a caller that has
	// just looked.
	afterOpen func(d blob.Digest, err error)
}

var errBoom = errors.New("injected failure")

func newProbe(t blob.Tier) *probe { return &probe{Tier: t} }

func (p *probe) inc(m string) {
	v, _ := p.calls.LoadOrStore(m, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

// count returns how often method m was called.
func (p *probe) count(m string) int64 {
	v, ok := p.calls.Load(m)
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

// total returns the number of calls of every method.
func (p *probe) total() int64 {
	var n int64
	p.calls.Range(func(_, v any) bool { n += v.(*atomic.Int64).Load(); return true })
	return n
}

func (p *probe) down(op string) error {
	return fmt.Errorf("probe %q: %s: %w", p.Name(), op, blob.ErrUnavailable)
}

func (p *probe) Stat(ctx context.Context, d blob.Digest) (blob.Info, error) {
	p.inc("Stat")
	if p.unavailable {
		return blob.Info{}, p.down("stat")
	}
	return p.Tier.Stat(ctx, d)
}

func (p *probe) Open(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	p.inc("Open")
	if p.entered != nil {
		p.entered <- struct{}{}
	}
	if p.gate != nil {
		select {
		case <-p.gate:
		case <-ctx.Done():
			return nil, blob.Info{}, ctx.Err()
		}
	}
	if p.unavailable {
		return nil, blob.Info{}, p.down("open")
	}
	if p.failOpens.Add(-1) >= 0 {
		return nil, blob.Info{}, fmt.Errorf("probe %q: open %s: %w", p.Name(), d, errBoom)
	}
	rc, info, err := p.Tier.Open(ctx, d)
	if p.afterOpen != nil {
		p.afterOpen(d, err)
	}
	if err != nil {
		return nil, info, err
	}
	p.openReaders.Add(1)
	var r io.ReadCloser = &trackedReader{ReadCloser: rc, open: &p.openReaders}
	if p.corrupt {
		r = &flipFirst{ReadCloser: r}
		if p.verify {
			r = blob.NewVerifier(r, d, info.Size, nil)
		}
	}
	return r, info, nil
}

func (p *probe) Put(ctx context.Context, d blob.Digest, size int64, r io.Reader) error {
	p.inc("Put")
	if p.unavailable {
		return p.down("put")
	}
	return p.Tier.Put(ctx, d, size, r)
}

func (p *probe) Delete(ctx context.Context, d blob.Digest) error {
	p.inc("Delete")
	if p.unavailable {
		return p.down("delete")
	}
	return p.Tier.Delete(ctx, d)
}

func (p *probe) Walk(ctx context.Context, fn func(blob.Info) error) error {
	p.inc("Walk")
	if p.unavailable {
		return p.down("walk")
	}
	return p.Tier.Walk(ctx, fn)
}

func (p *probe) GetRef(ctx context.Context, k blob.RefKey) (blob.Ref, error) {
	p.inc("GetRef")
	if p.unavailable {
		return blob.Ref{}, p.down("get ref")
	}
	return p.Tier.GetRef(ctx, k)
}

func (p *probe) PutRef(ctx context.Context, k blob.RefKey, r blob.Ref) error {
	p.inc("PutRef")
	if p.unavailable {
		return p.down("put ref")
	}
	return p.Tier.PutRef(ctx, k, r)
}

func (p *probe) DeleteRef(ctx context.Context, k blob.RefKey) error {
	p.inc("DeleteRef")
	if p.unavailable {
		return p.down("delete ref")
	}
	return p.Tier.DeleteRef(ctx, k)
}

func (p *probe) WalkRefs(ctx context.Context, ns string, fn func(blob.RefKey, blob.Ref) error) error {
	p.inc("WalkRefs")
	if p.unavailable {
		return p.down("walk refs")
	}
	return p.Tier.WalkRefs(ctx, ns, fn)
}

func (p *probe) Usage(ctx context.Context) (blob.Usage, error) {
	p.inc("Usage")
	if p.unavailable {
		return blob.Usage{}, p.down("usage")
	}
	return p.Tier.Usage(ctx)
}

// trackedReader counts open readers.
type trackedReader struct {
	io.ReadCloser
	open *atomic.Int64
	once sync.Once
}

func (r *trackedReader) Close() error {
	r.once.Do(func() { r.open.Add(-1) })
	return r.ReadCloser.Close()
}

// flipFirst flips the first byte it serves.
type flipFirst struct {
	io.ReadCloser
	done bool
}

func (f *flipFirst) Read(p []byte) (int, error) {
	n, err := f.ReadCloser.Read(p)
	if n > 0 && !f.done {
		p[0] ^= 0xff
		f.done = true
	}
	return n, err
}

// put stores b in tier and returns its digest.
func put(t testing.TB, tier blob.Tier, b []byte) blob.Digest {
	t.Helper()
	d := blob.FromBytes(b)
	if err := tier.Put(context.Background(), d, int64(len(b)), bytes.NewReader(b)); err != nil {
		t.Fatalf("Put(%s) into %s = %v", d, tier.Name(), err)
	}
	return d
}

// readAll opens d and reads it to the end.
func readAll(ctx context.Context, tier blob.Tier, d blob.Digest) ([]byte, blob.Info, error) {
	rc, info, err := tier.Open(ctx, d)
	if err != nil {
		return nil, info, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return b, info, err
}

// has reports whether tier holds d (Stat hit).
func has(t testing.TB, tier blob.Tier, d blob.Digest) bool {
	t.Helper()
	_, err := tier.Stat(context.Background(), d)
	if err != nil && !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Stat(%s) in %s = %v", d, tier.Name(), err)
	}
	return err == nil
}

// waitFor polls cond until it holds or a generous bound passes; the bound
// only keeps a broken test from hanging, it asserts nothing about time.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitGoroutines waits until the goroutine count is back to at most n.
func waitGoroutines(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutines: %d, want <= %d; stacks:\n%s", runtime.NumGoroutine(), n, buf)
		}
		time.Sleep(time.Millisecond)
	}
}

// metricValue returns the value of the counter (or the sample count of the
// histogram) called name whose labels include labels; 0 if absent.
func metricValue(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather = %v", err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !hasLabels(m, labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	got := map[string]string{}
	for _, lp := range m.GetLabel() {
		got[lp.GetName()] = lp.GetValue()
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}
