// Package tierlat measures tier latency: Stat, Open+read and Put of blobs of
// given sizes on the memory tier, the disk tier and a stack of both, with a
// file+sha256 baseline: a warm-up, then one timed operation per sample until
// a time budget or a sample cap is used up (at least MinSamples), reported as
// percentiles. The stack's own costs (metrics on or off, fills from a lower
// tier) are go test benchmarks in package tiers.
package tierlat

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/disk"
	"github.com/strata-oci/strata/tiers/memory"
)

// Backends the package can measure.
var Backends = []string{"baseline", "memory", "disk", "stack"}

// Config says what to measure and for how long.
type Config struct {
	Sizes      []int64
	Budget     time.Duration // timed sampling per (op, size)
	Warmup     time.Duration
	MinSamples int
	MaxSamples int
	// Dir holds the disk tier and the baseline files.
	Dir string
}

// Result is one measured (backend, op, size).
type Result struct {
	Backend     string  `json:"backend"`
	Op          string  `json:"op"`
	Size        int64   `json:"size"`
	Samples     int     `json:"samples"`
	P50         float64 `json:"p50_ns"`
	P95         float64 `json:"p95_ns"`
	P99         float64 `json:"p99_ns"`
	MBps        float64 `json:"mb_per_s,omitempty"`
	AllocsPerOp float64 `json:"allocs_per_op"`
	// Batch is how many operations one sample timed (see measure).
	Batch int `json:"batch,omitempty"`
	// Processes is how many processes' measurements were merged into this
	// one (the harness's mergeTiers); 0 means one.
	Processes int `json:"processes,omitempty"`
}

// Run measures backend ("baseline", "memory", "disk" or "stack").
func Run(ctx context.Context, backend string, cfg Config) ([]Result, error) {
	if backend == "baseline" {
		var out []Result
		for _, size := range cfg.Sizes {
			r, err := baseline(cfg, content(size))
			if err != nil {
				return nil, err
			}
			out = append(out, r)
		}
		return out, nil
	}
	t, closeFn, err := open(backend, cfg.Dir)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	var out []Result
	for _, size := range cfg.Sizes {
		rs, err := measureTier(ctx, cfg, backend, t, size)
		if err != nil {
			return nil, fmt.Errorf("tierlat: %s, %d bytes: %w", backend, size, err)
		}
		out = append(out, rs...)
	}
	return out, nil
}

func open(backend, dir string) (blob.Tier, func() error, error) {
	mem := func() *memory.Tier {
		return memory.New(memory.Config{Name: "memory", Budget: 512 << 20, MaxBlob: 64 << 20})
	}
	switch backend {
	case "memory":
		t := mem()
		return t, t.Close, nil
	case "disk":
		t, err := disk.Open(disk.Config{Root: filepath.Join(dir, "disk")})
		if err != nil {
			return nil, nil, err
		}
		return t, t.Close, nil
	case "stack":
		d, err := disk.Open(disk.Config{Root: filepath.Join(dir, "stack-disk")})
		if err != nil {
			return nil, nil, err
		}
		s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: mem()}, {Tier: d}}})
		return s, s.Close, nil // closes both tiers
	}
	return nil, nil, fmt.Errorf("tierlat: unknown backend %q", backend)
}

func baseline(cfg Config, data []byte) (Result, error) {
	path := filepath.Join(cfg.Dir, fmt.Sprintf("baseline-%d", len(data)))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return Result{}, err
	}
	defer os.Remove(path)
	want := sha256.Sum256(data)
	return measure(cfg, "file+sha256", "open+read", int64(len(data)), func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if sha256.Sum256(b) != want {
			return errors.New("baseline file changed")
		}
		return nil
	}, nil)
}

func measureTier(ctx context.Context, cfg Config, name string, t blob.Tier, size int64) ([]Result, error) {
	data := content(size)
	d := blob.FromBytes(data)
	if err := t.Put(ctx, d, size, bytes.NewReader(data)); err != nil {
		return nil, err
	}
	var out []Result
	r, err := measure(cfg, name, "stat", size, func() error {
		_, err := t.Stat(ctx, d)
		return err
	}, nil)
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	// Read through a buffer, copying every byte (see drain).
	buf := make([]byte, 64<<10)
	r, err = measure(cfg, name, "open+read", size, func() error {
		rc, _, err := t.Open(ctx, d)
		if err != nil {
			return err
		}
		n, err := drain(rc, buf)
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		if err == nil && n != size {
			err = fmt.Errorf("read %d bytes, want %d", n, size)
		}
		return err
	}, nil)
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	// Put of a blob the tier does not hold: deleted untimed after each.
	if err := t.Delete(ctx, d); err != nil {
		return nil, err
	}
	src := bytes.NewReader(data)
	r, err = measure(cfg, name, "put", size, func() error {
		src.Reset(data)
		return t.Put(ctx, d, size, src)
	}, func() error { return t.Delete(ctx, d) })
	if err != nil {
		return nil, err
	}
	return append(out, r), nil
}

// batchTarget is the least time one sample of an operation without a reset
// spans: faster operations are timed in batches, each sample being a
// batch's mean, so that sub-microsecond operations are not measured in
// clock ticks and scheduler noise (their p50s moved by 25-40% between two
// runs when timed one by one).
const batchTarget = 5 * time.Microsecond

// measure warms up, then times fn once per sample, or a batch of calls per
// sample when fn is quicker than batchTarget and needs no reset; reset runs
// untimed after each call and its allocations are not counted.
func measure(cfg Config, backend, op string, size int64, fn, reset func() error) (Result, error) {
	call := func() error {
		if err := fn(); err != nil {
			return err
		}
		if reset != nil {
			return reset()
		}
		return nil
	}
	calls := 0
	start := time.Now()
	for time.Since(start) < cfg.Warmup {
		if err := call(); err != nil {
			return Result{}, err
		}
		calls++
	}
	batch := 1
	if per := time.Since(start) / time.Duration(max(calls, 1)); reset == nil && per < batchTarget {
		batch = int(min(1000, batchTarget/max(per, time.Nanosecond)+1))
	}
	runtime.GC()
	samples := make([]time.Duration, 0, 4096)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	mallocs := ms.Mallocs
	var resetAllocs uint64
	begin := time.Now()
	for len(samples) < cfg.MinSamples || (time.Since(begin) < cfg.Budget && len(samples) < cfg.MaxSamples) {
		t0 := time.Now()
		for range batch {
			if err := fn(); err != nil {
				return Result{}, err
			}
		}
		samples = append(samples, time.Since(t0)/time.Duration(batch))
		if reset != nil {
			runtime.ReadMemStats(&ms)
			before := ms.Mallocs
			if err := reset(); err != nil {
				return Result{}, err
			}
			runtime.ReadMemStats(&ms)
			resetAllocs += ms.Mallocs - before
		}
	}
	runtime.ReadMemStats(&ms)
	slices.Sort(samples)
	r := Result{
		Backend: backend, Op: op, Size: size, Samples: len(samples),
		P50: float64(Percentile(samples, 50)), P95: float64(Percentile(samples, 95)), P99: float64(Percentile(samples, 99)),
		AllocsPerOp: float64(ms.Mallocs-mallocs-resetAllocs) / float64(len(samples)*batch),
		Batch:       batch,
	}
	if op != "stat" && r.P50 > 0 {
		r.MBps = float64(size) / (r.P50 / 1e9) / 1e6
	}
	return r, nil
}

// Percentile returns the p-th percentile (nearest rank) of sorted.
func Percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[max(0, min(len(sorted)-1, i-1))]
}

// content returns size deterministic incompressible bytes.
func content(size int64) []byte {
	b := make([]byte, size)
	var key [32]byte
	key[0], key[1], key[2] = 0x5a, byte(size), byte(size>>16)
	rand.NewChaCha8(key).Read(b)
	return b
}

// drain reads r to EOF through buf and returns the bytes read. (io.Copy
// would let an in-memory reader hand its slice to io.Discard untouched.)
func drain(r io.Reader, buf []byte) (int64, error) {
	var total int64
	for {
		n, err := r.Read(buf)
		total += int64(n)
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}
