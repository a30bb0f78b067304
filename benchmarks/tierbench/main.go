// Command tierbench measures the storage tiers and the stack: Stat,
// Open+read and Put latency percentiles, throughput and allocations per
// operation, for several blob sizes, and prints a Markdown table (or JSON).
//
//	go run ./benchmarks/tierbench            # full run
//	go run ./benchmarks/tierbench -quick     # smoke run, well under 20 s
//	go run ./benchmarks/tierbench -json      # machine-readable
//
// Every measurement is preceded by a warm-up; each sample times one
// operation, so the percentiles are per operation. Throughput is the blob
// size over the median latency. A baseline row, "file+sha256", reads the
// same bytes from a file with os.ReadFile and hashes them: the speed any
// verifying local tier is measured against.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/disk"
	"github.com/strata-oci/strata/tiers/memory"
)

// Result is one row of the report.
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
}

// backend is a tier under test; close releases it.
type backend struct {
	name  string
	tier  blob.Tier
	close func() error
}

type config struct {
	sizes    []int64
	budget   time.Duration // measuring time per (backend, op, size)
	warmup   time.Duration
	maxN     int
	minN     int
	dir      string
	backends []string
}

func main() {
	quick := flag.Bool("quick", false, "smoke run: fewer sizes and samples (well under 20 s)")
	flag.BoolVar(quick, "short", false, "alias of -quick")
	asJSON := flag.Bool("json", false, "print JSON instead of a Markdown table")
	sizes := flag.String("sizes", "1KiB,64KiB,1MiB,64MiB", "comma-separated blob sizes (B, KiB, MiB)")
	only := flag.String("backends", "", "comma-separated backends to run (default: all available)")
	dir := flag.String("dir", "", "directory for on-disk backends and the baseline file (default: a temp dir)")
	budget := flag.Duration("time", time.Second, "measuring time per backend, operation and size")
	flag.Parse()

	cfg := config{budget: *budget, warmup: *budget / 5, maxN: 200_000, minN: 10}
	var err error
	if cfg.sizes, err = parseSizes(*sizes); err != nil {
		fatal(err)
	}
	if *quick {
		cfg.budget, cfg.warmup, cfg.maxN, cfg.minN = 100*time.Millisecond, 10*time.Millisecond, 20_000, 3
		if !flagSet("sizes") {
			cfg.sizes = []int64{1 << 10, 64 << 10, 1 << 20}
		}
	}
	if *only != "" {
		cfg.backends = strings.Split(*only, ",")
	}
	cfg.dir = *dir
	if cfg.dir == "" {
		d, err := os.MkdirTemp("", "tierbench-")
		if err != nil {
			fatal(err)
		}
		defer os.RemoveAll(d)
		cfg.dir = d
	}
	results, err := run(context.Background(), cfg)
	if err != nil {
		fatal(err)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(results); err != nil {
			fatal(err)
		}
		return
	}
	printMarkdown(os.Stdout, results)
}

func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "tierbench:", err)
	os.Exit(1)
}

// backends lists the tiers to measure. Tiers whose packages have not landed
// are absent here rather than faked.
func backends(cfg config) []func() (backend, error) {
	mem := func(name string) *memory.Tier {
		return memory.New(memory.Config{Name: name, MaxBytes: 512 << 20, MaxBlobBytes: 64 << 20})
	}
	n := 0
	openDisk := func() (*disk.Tier, error) {
		n++
		return disk.Open(disk.Config{Root: filepath.Join(cfg.dir, fmt.Sprintf("disk-%d", n)), Name: "disk"})
	}
	return []func() (backend, error){
		func() (backend, error) {
			t := mem("memory")
			return backend{name: "memory", tier: t, close: t.Close}, nil
		},
		func() (backend, error) {
			t, err := openDisk()
			if err != nil {
				return backend{}, err
			}
			return backend{name: "disk", tier: t, close: t.Close}, nil
		},
		func() (backend, error) {
			dk, err := openDisk()
			if err != nil {
				return backend{}, err
			}
			s := tiers.NewStack(tiers.StackConfig{Name: "stack", Tiers: []tiers.Entry{{Tier: mem("memory")}, {Tier: dk}}})
			return backend{name: "stack(memory+disk)", tier: s, close: s.Close}, nil
		},
		func() (backend, error) {
			// A memory tier that declines every blob: reads stream from
			// disk through the stack, so this row is the stack's cost over
			// the disk tier's.
			dk, err := openDisk()
			if err != nil {
				return backend{}, err
			}
			tiny := memory.New(memory.Config{Name: "memory", MaxBlobBytes: 1})
			s := tiers.NewStack(tiers.StackConfig{Name: "stack", Tiers: []tiers.Entry{{Tier: tiny}, {Tier: dk}}})
			return backend{name: "stack(memory+disk)/from-disk", tier: s, close: s.Close}, nil
		},
		func() (backend, error) {
			s := tiers.NewStack(tiers.StackConfig{Name: "stack", Tiers: []tiers.Entry{{Tier: mem("top")}, {Tier: mem("bottom")}}})
			return backend{name: "stack(memory+memory)", tier: s, close: s.Close}, nil
		},
		func() (backend, error) {
			m, err := tiers.NewMetrics(nil)
			if err != nil {
				return backend{}, err
			}
			s := tiers.NewStack(tiers.StackConfig{Name: "stack", Tiers: []tiers.Entry{{Tier: mem("top")}, {Tier: mem("bottom")}}, Metrics: m})
			return backend{name: "stack(memory+memory)+metrics", tier: s, close: s.Close}, nil
		},
	}
}

func run(ctx context.Context, cfg config) ([]Result, error) {
	var out []Result
	for _, size := range cfg.sizes {
		r, err := baseline(cfg, randomBytes(size, 7))
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	for _, mk := range backends(cfg) {
		b, err := mk()
		if err != nil {
			return nil, err
		}
		if len(cfg.backends) > 0 && !slices.Contains(cfg.backends, b.name) {
			b.close()
			continue
		}
		for _, size := range cfg.sizes {
			rs, err := measureTier(ctx, cfg, b, size)
			if err != nil {
				b.close()
				return nil, fmt.Errorf("%s, %d bytes: %w", b.name, size, err)
			}
			out = append(out, rs...)
		}
		if err := b.close(); err != nil {
			return nil, fmt.Errorf("%s: close: %w", b.name, err)
		}
	}
	return out, nil
}

// baseline times os.ReadFile plus sha256 of a file holding content.
func baseline(cfg config, content []byte) (Result, error) {
	path := filepath.Join(cfg.dir, fmt.Sprintf("baseline-%d", len(content)))
	if err := os.WriteFile(path, content, 0o600); err != nil {
		return Result{}, err
	}
	defer os.Remove(path)
	want := sha256.Sum256(content)
	return measure(cfg, "file+sha256", "read", int64(len(content)), func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if sha256.Sum256(b) != want {
			return errors.New("baseline file changed")
		}
		return nil
	})
}

func measureTier(ctx context.Context, cfg config, b backend, size int64) ([]Result, error) {
	content := randomBytes(size, 11)
	d := blob.FromBytes(content)
	if err := b.tier.Put(ctx, d, size, bytes.NewReader(content)); err != nil {
		return nil, err
	}
	var out []Result
	r, err := measure(cfg, b.name, "stat", size, func() error {
		_, err := b.tier.Stat(ctx, d)
		return err
	})
	if err != nil {
		return nil, err
	}
	out = append(out, r)

	// Reads go through a 32 KiB buffer, as a consumer that looks at the
	// bytes would (a WriterTo handing its slice to io.Discard would copy
	// nothing and measure nothing).
	buf := make([]byte, 32<<10)
	r, err = measure(cfg, b.name, "open+read", size, func() error {
		rc, _, err := b.tier.Open(ctx, d)
		if err != nil {
			return err
		}
		n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{rc}, buf)
		rc.Close()
		if err == nil && n != size {
			err = fmt.Errorf("read %d bytes, want %d", n, size)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	out = append(out, r)

	// Put of a blob the tier does not hold: the previous sample's copy is
	// deleted outside the timed section.
	if err := b.tier.Delete(ctx, d); err != nil {
		return nil, err
	}
	src := bytes.NewReader(content)
	r, err = measureWithReset(cfg, b.name, "put", size, func() error {
		src.Reset(content)
		return b.tier.Put(ctx, d, size, src)
	}, func() error { return b.tier.Delete(ctx, d) })
	if err != nil {
		return nil, err
	}
	return append(out, r), nil
}

func measure(cfg config, backendName, op string, size int64, fn func() error) (Result, error) {
	return measureWithReset(cfg, backendName, op, size, fn, nil)
}

// measureWithReset warms up, then times fn once per sample until the
// budget or maxN is used up (at least minN samples); reset, if set, runs
// untimed after every call. Allocations are counted over the timed calls
// (reset's are subtracted by measuring it alone).
func measureWithReset(cfg config, backendName, op string, size int64, fn, reset func() error) (Result, error) {
	call := func() error {
		if err := fn(); err != nil {
			return err
		}
		if reset != nil {
			return reset()
		}
		return nil
	}
	for start := time.Now(); time.Since(start) < cfg.warmup; {
		if err := call(); err != nil {
			return Result{}, err
		}
	}
	runtime.GC()
	samples := make([]time.Duration, 0, 1024)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	mallocs := ms.Mallocs
	var resetAllocs uint64
	begin := time.Now()
	for len(samples) < cfg.minN || (time.Since(begin) < cfg.budget && len(samples) < cfg.maxN) {
		t0 := time.Now()
		if err := fn(); err != nil {
			return Result{}, err
		}
		samples = append(samples, time.Since(t0))
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
	// The samples slice grows while measuring; its own allocations are a
	// handful in total and vanish in the per-op figure.
	allocs := float64(ms.Mallocs-mallocs-resetAllocs) / float64(len(samples))
	slices.Sort(samples)
	r := Result{
		Backend:     backendName,
		Op:          op,
		Size:        size,
		Samples:     len(samples),
		P50:         float64(pct(samples, 50)),
		P95:         float64(pct(samples, 95)),
		P99:         float64(pct(samples, 99)),
		AllocsPerOp: allocs,
	}
	if op != "stat" && r.P50 > 0 {
		r.MBps = float64(size) / (r.P50 / 1e9) / 1e6
	}
	return r, nil
}

// randomBytes returns size deterministic pseudo-random bytes (incompressible,
// so no tier or disk gets an unrealistic shortcut).
func randomBytes(size int64, seed byte) []byte {
	b := make([]byte, size)
	var key [32]byte
	key[0], key[1] = seed, byte(size)
	rand.NewChaCha8(key).Read(b)
	return b
}

func pct(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[max(0, min(len(sorted)-1, i-1))]
}

func printMarkdown(w io.Writer, rs []Result) {
	fmt.Fprintln(w, "| backend | op | size | samples | p50 | p95 | p99 | MB/s | allocs/op |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rs {
		mbps := "-"
		if r.MBps > 0 {
			mbps = fmt.Sprintf("%.0f", r.MBps)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %d | %s | %s | %s | %s | %.1f |\n",
			r.Backend, r.Op, formatSize(r.Size), r.Samples,
			formatNS(r.P50), formatNS(r.P95), formatNS(r.P99), mbps, r.AllocsPerOp)
	}
}

func formatNS(ns float64) string {
	d := time.Duration(ns)
	switch {
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", d.Nanoseconds())
	case d < time.Millisecond:
		return fmt.Sprintf("%.2fµs", float64(d)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}

func formatSize(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	default:
		return fmt.Sprintf("%dB", n)
	}
}

func parseSizes(s string) ([]int64, error) {
	var out []int64
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		mult := int64(1)
		switch {
		case strings.HasSuffix(f, "MiB"):
			mult, f = 1<<20, strings.TrimSuffix(f, "MiB")
		case strings.HasSuffix(f, "KiB"):
			mult, f = 1<<10, strings.TrimSuffix(f, "KiB")
		case strings.HasSuffix(f, "B"):
			f = strings.TrimSuffix(f, "B")
		}
		var n int64
		if _, err := fmt.Sscanf(f, "%d", &n); err != nil || n < 0 || n > 1<<30 {
			return nil, fmt.Errorf("bad size %q (want e.g. 1KiB, 64MiB; at most 1024MiB)", f)
		}
		out = append(out, n*mult)
	}
	return out, nil
}
