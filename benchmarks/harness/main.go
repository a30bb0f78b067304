// Command harness is Strata's benchmark harness: tier latency, and the
// whole pipeline (fetch, overlay and ext4 materialization, concurrent
// dedup) on reproducible synthetic images, side by side with peers
// (go-containerregistry's pull and export, tar -x, mke2fs -d) in the same
// run, interleaved. See docs/benchmarks.md.
//
//	go run ./benchmarks/harness -size smoke              # CI-sized, well under 2 minutes
//	go run ./benchmarks/harness -size full -out bench-out # about 7 minutes on 2 cores
//	go run ./benchmarks/harness -size full -compare bench-out/results.json -update-doc
//
// It writes results.json, results.md and SVG charts into -out and prints
// the Markdown. Each measurement runs in a child process (this binary
// re-executed with a hidden first argument), so every scenario's peak RSS is
// its own and no scenario warms another's caches.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/benchmarks/internal/pipeline"
	"github.com/strata-oci/strata/benchmarks/internal/reapisrv"
	"github.com/strata-oci/strata/benchmarks/internal/regserver"
	"github.com/strata-oci/strata/benchmarks/internal/report"
	"github.com/strata-oci/strata/benchmarks/internal/synth"
	"github.com/strata-oci/strata/benchmarks/internal/tierlat"
)

// childArg, as the first argument, makes the binary run one measurement
// described by the JSON second argument and print its result as JSON.
const childArg = "-harness-child"

func main() {
	if len(os.Args) > 1 && os.Args[1] == childArg {
		os.Exit(childMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// childSpec is what a child process measures.
type childSpec struct {
	Kind    string         `json:"kind"` // "tiers" or "pipeline"
	Backend string         `json:"backend,omitempty"`
	Tiers   tierlat.Config `json:"tiers"`
	Job     pipeline.Job   `json:"job"`
}

type childResult struct {
	Tiers   []tierlat.Result  `json:"tiers,omitempty"`
	Outcome *pipeline.Outcome `json:"outcome,omitempty"`
	// HWMKiB is the child's own peak RSS (VmHWM of its address space,
	// which starts at exec, so the parent's memory is not counted).
	HWMKiB int64 `json:"hwm_kib"`
	// ToolsMaxRSSKiB is the largest peak RSS among the processes the child
	// ran (tar, mke2fs, crane): getrusage(RUSAGE_CHILDREN).
	ToolsMaxRSSKiB int64 `json:"tools_max_rss_kib"`
}

func childMain(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "harness child: want one JSON argument")
		return 2
	}
	var spec childSpec
	if err := json.Unmarshal([]byte(args[0]), &spec); err != nil {
		fmt.Fprintln(stderr, "harness child:", err)
		return 2
	}
	ctx := context.Background()
	var res childResult
	var err error
	switch spec.Kind {
	case "tiers":
		res.Tiers, err = tierlat.Run(ctx, spec.Backend, spec.Tiers)
	case "pipeline":
		stop := profile(spec.Job.Scenario, stderr)
		res.Outcome, err = pipeline.Run(ctx, spec.Job)
		stop()
	default:
		err = fmt.Errorf("unknown child kind %q", spec.Kind)
	}
	if err == nil {
		res.HWMKiB, err = vmHWM()
	}
	if err == nil {
		var ru syscall.Rusage
		if err = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err == nil {
			res.ToolsMaxRSSKiB = ru.Maxrss
		}
	}
	if err == nil {
		err = json.NewEncoder(stdout).Encode(res)
	}
	if err != nil {
		fmt.Fprintln(stderr, "harness child:", err)
		return 1
	}
	return 0
}

// profile starts a CPU profile of a pipeline job when the environment
// variable STRATA_HARNESS_CPUPROFILE names a directory (the whole job,
// set-up included; system time counts too). It returns the stop function.
func profile(scenario string, stderr io.Writer) func() {
	dir := os.Getenv("STRATA_HARNESS_CPUPROFILE")
	if dir == "" {
		return func() {}
	}
	name := strings.NewReplacer("/", "_").Replace(scenario)
	f, err := os.CreateTemp(dir, name+"-*.pprof")
	if err != nil {
		fmt.Fprintln(stderr, "harness child: cpu profile:", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintln(stderr, "harness child: cpu profile:", err)
		f.Close()
		return func() {}
	}
	// An execution trace next to it (go tool trace): where the job waited.
	tf, err := os.Create(strings.TrimSuffix(f.Name(), ".pprof") + ".trace")
	if err == nil && trace.Start(tf) != nil {
		tf.Close()
		tf = nil
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
		if tf != nil {
			trace.Stop()
			tf.Close()
		}
	}
}

// plan is what one -size runs.
type plan struct {
	images      []imagePlan
	tiers       tierlat.Config
	reps        int
	concurrency int
	warmSamples int
	skipTiers   bool
	tierProcs   int // processes per tier backend (see mergeTiers)
	// memoryBudget, when set, replaces every executor's memory tier budget
	// (see pipeline.Job.MemoryBudget).
	memoryBudget *int64
	// registryReadStreams is every executor's RegistryReadStreams.
	registryReadStreams int
}

// needsRemote reports whether a scenario of p needs the shared REAPI tier.
func (p plan) needsRemote() bool {
	for _, ip := range p.images {
		for _, s := range ip.scenarios {
			if slices.Contains(pipeline.NeedsRemote, s) {
				return true
			}
		}
	}
	return false
}

type imagePlan struct {
	spec      synth.Spec
	scenarios []string
}

// restrict keeps only the named pipeline scenarios and drops the tier
// measurements.
func (p *plan) restrict(names []string) error {
	for _, n := range names {
		if !slices.Contains(pipeline.Scenarios, n) {
			return fmt.Errorf("-only: unknown scenario %q (known: %s)", n, strings.Join(pipeline.Scenarios, ", "))
		}
	}
	for i := range p.images {
		p.images[i].scenarios = slices.DeleteFunc(slices.Clone(p.images[i].scenarios), func(s string) bool { return !slices.Contains(names, s) })
	}
	p.images = slices.DeleteFunc(p.images, func(ip imagePlan) bool { return len(ip.scenarios) == 0 })
	p.skipTiers = true
	return nil
}

func makePlan(size string, seed uint64) (plan, error) {
	all := pipeline.Scenarios
	cold := []string{pipeline.FetchCold, pipeline.FetchColdPeer, pipeline.OverlayCold, pipeline.OverlayColdPeer, pipeline.Ext4}
	// The small-file image: overlay cold against its peer and its floor,
	// and ext4 cold against the classic route.
	smallFiles := []string{pipeline.OverlayCold, pipeline.OverlayColdPeer, pipeline.OverlayFloor, pipeline.Ext4Cold, pipeline.Ext4ColdPeer}
	switch size {
	case "smoke":
		return plan{
			images: []imagePlan{
				{spec: synth.Spec{Name: "bench/smoke-gzip", Seed: seed, Layers: 3, LayerBytes: 2 << 20, FilesPerLayer: 100, Compressibility: 0.5, Compression: synth.Gzip, Whiteouts: 5}, scenarios: all},
				{spec: synth.Spec{Name: "bench/smoke-zstd", Seed: seed + 1, Layers: 2, LayerBytes: 1 << 20, FilesPerLayer: 50, Compressibility: 0.5, Compression: synth.Zstd, Whiteouts: 2}, scenarios: cold},
				{spec: synth.Spec{Name: "bench/smoke-debian", Seed: seed + 2, Layers: 3, FilesPerLayer: 100, Compressibility: 0.6, Compression: synth.Gzip, Whiteouts: 5, Profile: synth.Debian}, scenarios: smallFiles},
			},
			tiers:       tierlat.Config{Sizes: []int64{1 << 10, 64 << 10, 1 << 20}, Budget: 60 * time.Millisecond, Warmup: 10 * time.Millisecond, MinSamples: 5, MaxSamples: 5000},
			reps:        1,
			concurrency: 4,
			warmSamples: 20,
		}, nil
	case "full":
		return plan{
			images: []imagePlan{
				// The issue-6 image (8 gzip layers, 512 MiB uncompressed) and
				// the issue-7 image (512 MiB, 20k files, multi-layer) in one.
				{spec: synth.Spec{Name: "bench/big-gzip", Seed: seed, Layers: 8, LayerBytes: 64 << 20, FilesPerLayer: 2500, Compressibility: 0.5, Compression: synth.Gzip, Whiteouts: 20}, scenarios: all},
				{spec: synth.Spec{Name: "bench/mid-zstd", Seed: seed + 1, Layers: 4, LayerBytes: 32 << 20, FilesPerLayer: 1000, Compressibility: 0.5, Compression: synth.Zstd, Whiteouts: 10}, scenarios: cold},
				// Like the issue-18 Debian image: 6 gzip layers, about 8k
				// small files (about 1k directories, 800 symlinks).
				{spec: synth.Spec{Name: "bench/debian-like", Seed: seed + 2, Layers: 6, FilesPerLayer: 1350, Compressibility: 0.6, Compression: synth.Gzip, Whiteouts: 20, Profile: synth.Debian}, scenarios: smallFiles},
			},
			tiers:       tierlat.Config{Sizes: []int64{1 << 10, 64 << 10, 1 << 20, 64 << 20}, Budget: 250 * time.Millisecond, Warmup: 100 * time.Millisecond, MinSamples: 7, MaxSamples: 200_000},
			reps:        5,
			tierProcs:   3,
			concurrency: 8,
			warmSamples: 200,
		}, nil
	}
	return plan{}, fmt.Errorf("unknown -size %q (want smoke or full)", size)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("harness", flag.ContinueOnError)
	fs.SetOutput(stderr)
	size := fs.String("size", "smoke", "smoke (CI, well under 2 minutes) or full (about 7 minutes on 2 cores)")
	out := fs.String("out", "bench-out", "directory for results.json, results.md and the SVG charts")
	seed := fs.Uint64("seed", 1, "seed of the synthetic images")
	reps := fs.Int("reps", 0, "repetitions of each pipeline scenario (default: 1 for smoke, 5 for full)")
	work := fs.String("work", "", "parent of the scratch directory (default: the system temp dir)")
	scratch := fs.String("scratch", scratchAuto, "where jobs write: loop (a fresh journaled ext4, loop-mounted under -work; needs root), dir (-work's own filesystem), or auto (loop when possible)")
	compare := fs.String("compare", "", "results.json of an earlier run to compare medians with")
	updateDoc := fs.Bool("update-doc", false, "rewrite the results section of -doc with this run")
	doc := fs.String("doc", "docs/benchmarks.md", "the document -update-doc rewrites")
	from := fs.String("from", "", "render an earlier run's results.json instead of measuring (with -compare, -out, -update-doc)")
	fleet := fs.Bool("fleet", false, "measure fleet-wide pull collapse instead (1, 4 and 16 executors sharing a REAPI tier, with and without leases; -reps times, default 3) and print a Markdown table")
	only := fs.String("only", "", "comma-separated pipeline scenarios to run (default: all); tier measurements are skipped when set")
	regBin := fs.String("registry-binary", regserver.DistributionBinary, "distribution registry binary (in-process registry when absent)")
	memBudget := fs.Int64("memory-budget", -1, "memory tier budget in bytes of every executor (0: no memory tier; -1: strata.Default's)")
	regStreams := fs.Int("registry-read-streams", 0, "Range requests at once per large registry blob of every executor (strata.Config.RegistryReadStreams; 0: one GET)")
	remoteZstd := fs.Bool("remote-zstd", true, "the shared REAPI tier advertises zstd compressed-blobs (as production servers do)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *fleet {
		n := *reps
		if n <= 0 {
			n = 3
		}
		if err := runFleet(stdout, n); err != nil {
			fmt.Fprintln(stderr, "harness:", err)
			return 1
		}
		return 0
	}
	p, err := makePlan(*size, *seed)
	if err != nil {
		fmt.Fprintln(stderr, "harness:", err)
		return 2
	}
	if *reps > 0 {
		p.reps = *reps
	}
	if *memBudget >= 0 {
		p.memoryBudget = memBudget
	}
	p.registryReadStreams = *regStreams
	if *only != "" {
		if err := p.restrict(strings.Split(*only, ",")); err != nil {
			fmt.Fprintln(stderr, "harness:", err)
			return 2
		}
	}
	var r *report.Report
	if *from != "" {
		r, err = report.Read(*from)
	} else {
		r, err = bench(ctx, p, *size, *seed, *work, *scratch, *regBin, *remoteZstd, stderr)
	}
	if err != nil {
		fmt.Fprintln(stderr, "harness:", err)
		return 1
	}
	if *compare != "" {
		prev, err := report.Read(*compare)
		if err != nil {
			fmt.Fprintln(stderr, "harness:", err)
			return 1
		}
		r.CompareWith(prev, fmt.Sprintf("the run started %s (load before %s; CPU time stolen by the host: %.1f%% then, %.1f%% now)",
			prev.Started, prev.Machine.LoadBefore, prev.Machine.StealPercent, r.Machine.StealPercent))
	}
	md, err := r.Write(*out)
	if err != nil {
		fmt.Fprintln(stderr, "harness:", err)
		return 1
	}
	fmt.Fprint(stdout, md)
	if *updateDoc {
		// The charts stay in -out: the document does not link them.
		var b bytes.Buffer
		r.Markdown(&b, nil)
		if err := report.UpdateDoc(*doc, b.String()); err != nil {
			fmt.Fprintln(stderr, "harness:", err)
			return 1
		}
	}
	return 0
}

func bench(ctx context.Context, p plan, size string, seed uint64, workParent, scratchMode, regBin string, remoteZstd bool, log io.Writer) (*report.Report, error) {
	start := time.Now()
	r := &report.Report{Size: size, Seed: seed, Machine: machine(), Started: start.UTC().Format(time.RFC3339), TierRSS: map[string]int64{}}
	cpu0, cpuOK := cpuTicks()
	sfs, err := openScratch(ctx, workParent, scratchMode, log)
	if err != nil {
		return nil, err
	}
	defer sfs.close()
	work := sfs.Dir
	r.Machine.Scratch = sfs.Desc
	fmt.Fprintf(log, "harness: working on %s\n", sfs.Desc)
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}

	reg, err := regserver.Start(ctx, filepath.Join(work, "registry"), regBin)
	if err != nil {
		return nil, err
	}
	defer reg.Close()
	r.Registry = reg.Kind
	fmt.Fprintf(log, "harness: registry %s at %s\n", reg.Kind, reg.Host)

	// The shared REAPI tier, when a scenario needs one.
	var remote *reapisrv.Server
	if p.needsRemote() {
		if remote, err = reapisrv.Start(reapisrv.Options{Zstd: remoteZstd}); err != nil {
			return nil, err
		}
		defer remote.Close()
		r.Remote = remote.Desc
		fmt.Fprintf(log, "harness: shared REAPI tier at %s\n", remote.Endpoint)
	}
	remoteJob := func(j pipeline.Job) pipeline.Job {
		if remote != nil {
			j.Remote, j.RemoteInstance = remote.Endpoint, reapisrv.Instance
		}
		return j
	}

	type pushed struct {
		plan          imagePlan
		img           report.Image
		cache, layout string
	}
	var images []pushed
	for _, ip := range p.images {
		t0 := time.Now()
		img, err := synth.Generate(ctx, ip.spec, filepath.Join(work, "images"))
		if err != nil {
			return nil, err
		}
		ref, err := synth.Push(ctx, reg.Host, img, "v1")
		if err != nil {
			return nil, err
		}
		ri := report.Image{Name: ip.spec.Name, Ref: ref, Digest: img.Digest, Compression: ip.spec.Compression, Profile: ip.spec.Profile, Layers: ip.spec.Layers,
			Files: img.Files, UncompressedBytes: img.UncompressedBytes, CompressedBytes: img.CompressedBytes, Seconds: time.Since(t0).Seconds()}
		images = append(images, pushed{plan: ip, img: ri})
		r.Images = append(r.Images, ri)
		fmt.Fprintf(log, "harness: pushed %s (%d files, %s uncompressed) in %.1fs\n", ref, img.Files, report.MiB(img.UncompressedBytes), ri.Seconds)
	}
	// Layer files are in the registry now.
	os.RemoveAll(filepath.Join(work, "images"))

	proxy, err := freeAddr()
	if err != nil {
		return nil, err
	}
	refKey := make([]byte, 32)
	if _, err := rand.Read(refKey); err != nil {
		return nil, err
	}
	// Prime, once per image, the warm cache (a disk tier) and the OCI
	// layout the warm scenarios and the ext4 peer start from.
	for i := range images {
		im := &images[i]
		im.cache = filepath.Join(work, "cache", fmt.Sprint(i), "tiers")
		im.layout = filepath.Join(work, "cache", fmt.Sprint(i), "layout")
		job := pipeline.Job{Scenario: pipeline.Prime, Registry: reg.Host, Proxy: proxy, RefKey: refKey, Repo: strings.TrimPrefix(im.img.Ref, reg.Host+"/"),
			WorkDir: filepath.Join(work, "cache", fmt.Sprint(i)), CacheDir: im.cache, LayoutDir: im.layout}
		t0 := time.Now()
		var res childResult
		if _, _, err := runChild(ctx, exe, childSpec{Kind: "pipeline", Job: job}, &res); err != nil {
			return nil, fmt.Errorf("prime %s: %w", im.img.Name, err)
		}
		fmt.Fprintf(log, "harness: primed the warm cache of %s in %.1fs\n", im.img.Name, time.Since(t0).Seconds())
		if remote == nil || !slices.ContainsFunc(im.plan.scenarios, func(s string) bool { return slices.Contains(pipeline.NeedsRemote, s) }) {
			continue
		}
		job.Scenario, job.WorkDir = pipeline.PrimeRemote, filepath.Join(work, "cache", fmt.Sprint(i), "remote")
		job = remoteJob(job)
		t0 = time.Now()
		if _, _, err := runChild(ctx, exe, childSpec{Kind: "pipeline", Job: job}, &res); err != nil {
			return nil, fmt.Errorf("prime the shared tier with %s: %w", im.img.Name, err)
		}
		os.RemoveAll(job.WorkDir)
		fmt.Fprintf(log, "harness: primed the shared REAPI tier with %s and its ext4 image in %.1fs\n", im.img.Name, time.Since(t0).Seconds())
	}

	// Finished jobs are deleted or kept: see keepJobs.
	var need int64
	for _, im := range images {
		need = max(need, 4*im.img.UncompressedBytes+1<<30)
	}
	jobN := 0
	jobDir := func() (string, error) {
		if err := keepJobs(work, need, sfs.journaled, log); err != nil {
			return "", err
		}
		jobN++
		d := filepath.Join(work, "jobs", fmt.Sprint(jobN))
		return d, os.MkdirAll(d, 0o755)
	}

	// Each backend is measured in p.tierProcs child processes, the rounds
	// interleaved; see mergeTiers.
	tierRuns := map[string][][]tierlat.Result{}
	for round := 0; round < max(1, p.tierProcs) && !p.skipTiers; round++ {
		for _, backend := range tierlat.Backends {
			dir, err := jobDir()
			if err != nil {
				return nil, err
			}
			cfg := p.tiers
			cfg.Dir = dir
			settle()
			var res childResult
			rss, _, err := runChild(ctx, exe, childSpec{Kind: "tiers", Backend: backend, Tiers: cfg}, &res)
			if err != nil {
				return nil, fmt.Errorf("tiers %s: %w", backend, err)
			}
			tierRuns[backend] = append(tierRuns[backend], res.Tiers)
			r.TierRSS[backend] = max(r.TierRSS[backend], rss)
			fmt.Fprintf(log, "harness: tiers %s done (process %d)\n", backend, round+1)
		}
	}
	for _, backend := range tierlat.Backends {
		if runs := tierRuns[backend]; len(runs) > 0 {
			r.Tiers = append(r.Tiers, mergeTiers(runs)...)
		}
	}

	type key struct{ image, scenario string }
	agg := map[key]*report.Scenario{}
	gets := map[key][]map[string]int{}
	get := func(k key) *report.Scenario {
		s := agg[k]
		if s == nil {
			s = &report.Scenario{Name: k.scenario, Image: k.image}
			agg[k] = s
		}
		return s
	}
	for rep := 0; rep < p.reps; rep++ {
		for _, im := range images {
			for _, sc := range im.plan.scenarios {
				if (sc == pipeline.Ext4Peer || sc == pipeline.Ext4ColdPeer) && !haveBinary("mke2fs") || (strings.Contains(sc, "flatten-tar") || sc == pipeline.Ext4ColdPeer) && !haveBinary("tar") {
					continue
				}
				dir, err := jobDir()
				if err != nil {
					return nil, err
				}
				repo := strings.TrimPrefix(im.img.Ref, reg.Host+"/")
				job := pipeline.Job{Scenario: sc, Registry: reg.Host, Proxy: proxy, RefKey: refKey, Repo: repo, UncompressedBytes: im.img.UncompressedBytes, Files: im.img.Files,
					WorkDir: dir, CacheDir: im.cache, LayoutDir: im.layout, Concurrency: p.concurrency, WarmSamples: p.warmSamples}
				if slices.Contains(pipeline.NeedsRemote, sc) {
					job = remoteJob(job)
				}
				job.MemoryBudget = p.memoryBudget
				job.RegistryReadStreams = p.registryReadStreams
				settle()
				var res childResult
				rss, cpu, err := runChild(ctx, exe, childSpec{Kind: "pipeline", Job: job}, &res)
				if err != nil {
					return nil, fmt.Errorf("%s on %s: %w", sc, im.img.Name, err)
				}
				o := res.Outcome
				for _, name := range slices.Sorted(maps.Keys(o.Samples)) {
					k := key{im.img.Name, name}
					s := get(k)
					s.Samples = append(s.Samples, o.Samples[name]...)
					s.PeakRSSKiB = max(s.PeakRSSKiB, rss)
					s.Tool, s.Note = o.Tool, o.Note
					if name == sc {
						s.CPU = append(s.CPU, float64(cpu))
						if len(o.BlobGets) > 0 {
							gets[k] = append(gets[k], o.BlobGets)
						}
					}
				}
				fmt.Fprintf(log, "harness: rep %d %s %s: %s\n", rep+1, im.img.Name, sc, summarize(o))
			}
		}
	}
	byName := map[string]report.Image{}
	for _, im := range images {
		byName[im.img.Name] = im.img
	}
	for k, s := range agg {
		sorted := slices.Sorted(slices.Values(s.Samples))
		s.Median, s.Min, s.Max = pipeline.Median(sorted), sorted[0], sorted[len(sorted)-1]
		s.CPUMedian = pipeline.Median(s.CPU)
		if len(sorted) >= 20 {
			s.P95 = sorted[(len(sorted)*95+99)/100-1]
		}
		im := byName[k.image]
		switch {
		case strings.HasPrefix(k.scenario, "fetch-"):
			s.MBps = float64(im.CompressedBytes) / (s.Median / 1e9) / 1e6
		case strings.HasPrefix(k.scenario, "overlay-cold"), k.scenario == pipeline.OverlayWarm, strings.HasPrefix(k.scenario, "overlay-floor"), strings.HasPrefix(k.scenario, "ext4"):
			s.MBps = float64(im.UncompressedBytes) / (s.Median / 1e9) / 1e6
		}
		var total, blobs int
		for _, g := range gets[k] {
			for _, n := range g {
				s.BlobGetsMax = max(s.BlobGetsMax, n)
				total += n
				blobs++
			}
		}
		if blobs > 0 {
			s.BlobGetsPerBlob = float64(total) / float64(blobs)
		}
		r.Pipeline = append(r.Pipeline, *s)
	}
	order := slices.Clone(pipeline.Scenarios)
	order = slices.Insert(order, slices.Index(order, pipeline.FetchWarm)+1, pipeline.ResolveWarm)
	order = slices.Insert(order, slices.Index(order, pipeline.OverlayWarm)+1, pipeline.OverlayPresent)
	order = slices.Insert(order, slices.Index(order, pipeline.OverlayFloor)+1, pipeline.OverlayFloorLocal, pipeline.OverlayFloorDownload, pipeline.OverlayFloorDecompress, pipeline.OverlayFloorCreate)
	report.SortScenarios(r.Pipeline, order)
	for _, s := range r.Pipeline {
		base, ok := pipeline.PeerOf[s.Name]
		if !ok {
			continue
		}
		if b := agg[key{s.Image, base}]; b != nil && b.Median > 0 {
			r.Ratios = append(r.Ratios, report.Ratio{Scenario: base, Peer: s.Name, Image: s.Image, Tool: s.Tool, Ratio: s.Median / b.Median})
		}
	}
	for _, s := range r.Pipeline {
		if f := agg[key{s.Image, pipeline.FloorOf[s.Name]}]; f != nil && f.Median > 0 {
			r.Floors = append(r.Floors, report.FloorRatio{Scenario: s.Name, Floor: f.Name, Image: s.Image, Ratio: s.Median / f.Median})
		}
	}
	for _, im := range images {
		for _, g := range pipeline.Goals {
			a, b := agg[key{im.img.Name, g.Scenario}], agg[key{im.img.Name, g.Versus}]
			if a == nil || b == nil || b.Median <= 0 {
				continue
			}
			r.Goals = append(r.Goals, report.NewGoal(g.Name, im.img.Name, *a, *b, g.Max, g.MaxRSSMiB))
		}
	}
	r.Machine.LoadAfter = loadavg()
	if cpu1, ok := cpuTicks(); ok && cpuOK && cpu1.total > cpu0.total {
		r.Machine.StealPercent = 100 * float64(cpu1.steal-cpu0.steal) / float64(cpu1.total-cpu0.total)
	}
	r.Seconds = time.Since(start).Seconds()
	return r, nil
}

// keepJobs keeps finished jobs' directories while the filesystem under work
// has need bytes free, and otherwise deletes them, saying so in log.
//
// Deleting a finished job's tree right before the next job creates its own
// makes the next job pay for the deletion on ext4 without a journal (the
// root filesystem of the machines this harness was written on): its inode
// allocator passes over every inode deleted in the last 60 s, or 360 s
// while the inode's table block is dirty (recently_deleted in
// fs/ext4/ialloc.c). Creating 20k files right after deleting 20k others
// took 21 s there, against 1.1 s otherwise, and made consecutive runs
// disagree by up to 2x. Journaled ext4 and XFS have no such cost.
//
// On the run's own journaled scratch filesystem there is no such cost, and
// finished jobs are deleted at once instead (untimed): kept, a full run's
// 20 GiB of trees crowd the page cache, from which the registry's blobs and
// the primed cache were then read back from disk in later repetitions
// (overlay-warm varied from 1.8 to 4.4 s).
func keepJobs(work string, need int64, journaled bool, log io.Writer) error {
	if !journaled {
		var st syscall.Statfs_t
		if err := syscall.Statfs(work, &st); err != nil {
			return err
		}
		if free := int64(st.Bavail) * st.Bsize; free >= need {
			return nil
		}
		fmt.Fprintf(log, "harness: under %s free: deleting finished jobs; the next jobs may pay for it (see docs/benchmarks.md)\n", report.MiB(need))
	}
	return os.RemoveAll(filepath.Join(work, "jobs"))
}

// settle writes every filesystem's dirty data back, so that a job starts
// with none and is not slowed by writing back what the jobs before it wrote
// (the kernel starts that in the background once dirty pages reach
// vm.dirty_background_ratio, and a full run writes gigabytes). Without it,
// the second and third repetitions of a scenario ran up to 2.9x slower than
// the first on a 2-core machine.
func settle() {
	unix.Sync()
}

// removeAndSync deletes dir and writes the filesystem's dirty metadata back,
// which shortens the time a following run pays for the deletion (see
// keepJobs) from up to 360 s to about 60 s.
func removeAndSync(dir string) {
	os.RemoveAll(dir)
	if f, err := os.Open(filepath.Dir(dir)); err == nil {
		unix.Syncfs(int(f.Fd()))
		f.Close()
	}
}

// mergeTiers folds one backend's measurements from several processes: for
// each operation and size, the median over processes of each percentile
// (and of throughput and allocations), and the samples summed. A process
// brings its own memory layout and placement on the machine's cores, which
// moved sub-microsecond p50s between two levels (125 or 210 ns) from one
// process to the next; the median of three is steadier than any one.
func mergeTiers(runs [][]tierlat.Result) []tierlat.Result {
	out := slices.Clone(runs[0])
	for i := range out {
		var p50, p95, p99, mbps, allocs []float64
		out[i].Samples = 0
		for _, run := range runs {
			for _, t := range run {
				if t.Op != out[i].Op || t.Size != out[i].Size {
					continue
				}
				p50, p95, p99 = append(p50, t.P50), append(p95, t.P95), append(p99, t.P99)
				mbps, allocs = append(mbps, t.MBps), append(allocs, t.AllocsPerOp)
				out[i].Samples += t.Samples
				out[i].Batch = max(out[i].Batch, t.Batch)
			}
		}
		out[i].P50, out[i].P95, out[i].P99 = pipeline.Median(p50), pipeline.Median(p95), pipeline.Median(p99)
		out[i].MBps, out[i].AllocsPerOp = pipeline.Median(mbps), pipeline.Median(allocs)
		out[i].Processes = len(p50)
	}
	return out
}

func summarize(o *pipeline.Outcome) string {
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(o.Samples)) {
		xs := o.Samples[name]
		parts = append(parts, fmt.Sprintf("%s %.3fs", name, pipeline.Median(xs)/1e9))
	}
	return strings.Join(parts, ", ")
}

func haveBinary(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

// runChild runs spec in a child process, decodes its JSON result into res
// and returns the child's peak RSS in KiB and the CPU time (user+system,
// nanoseconds) it and the tools it ran used.
func runChild(ctx context.Context, exe string, spec childSpec, res *childResult) (rssKiB, cpuNS int64, err error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return 0, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, childArg, string(b))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if os.Getenv(pipeline.LogEnv) != "" { // the children log: pass it on
		cmd.Stderr = io.MultiWriter(&stderr, os.Stderr)
	}
	if err := cmd.Run(); err != nil {
		return 0, 0, fmt.Errorf("child: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(stdout.Bytes(), res); err != nil {
		return 0, 0, fmt.Errorf("child output: %w", err)
	}
	// Not the child's rusage from wait4: its maxrss includes this
	// process's RSS at the fork (Linux keeps the pre-exec high-water mark).
	if res.HWMKiB <= 0 {
		return 0, 0, errors.New("child reported no peak RSS")
	}
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return max(res.HWMKiB, res.ToolsMaxRSSKiB), cpu.Nanoseconds(), nil
}

// vmHWM returns this process's peak RSS in KiB from /proc/self/status.
func vmHWM() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb); err != nil {
				return 0, fmt.Errorf("VmHWM %q: %w", v, err)
			}
			return kb, nil
		}
	}
	return 0, errors.New("no VmHWM in /proc/self/status")
}

// freeAddr returns a free "127.0.0.1:port" for the children's proxy.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func machine() report.Machine {
	m := report.Machine{CPUs: runtime.NumCPU(), LoadBefore: loadavg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			m.MemMiB = kb >> 10
		}
	}
	return m
}

// ticks are the machine's CPU time counters from /proc/stat, all CPUs.
type ticks struct{ total, steal uint64 }

// cpuTicks reads the "cpu" line of /proc/stat. Steal is the time a virtual
// machine's CPUs were ready but the host ran something else: on a shared
// host, the run-to-run differences that no code change explains.
func cpuTicks() (ticks, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return ticks{}, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return ticks{}, false
	}
	var t ticks
	for i, v := range f[1:] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return ticks{}, false
		}
		if i >= 8 { // guest and guest_nice are already in user and nice
			break
		}
		t.total += n
		if i == 7 {
			t.steal = n
		}
	}
	return t, true
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
