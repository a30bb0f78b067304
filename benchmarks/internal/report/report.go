// Package report holds the benchmark harness's results and renders them:
// JSON, a Markdown report, SVG charts, and the marked results section of
// docs/benchmarks.md.
package report

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/strata-oci/strata/benchmarks/internal/svg"
	"github.com/strata-oci/strata/benchmarks/internal/tierlat"
)

// Markers delimit the section of docs/benchmarks.md the harness rewrites.
const (
	BeginMarker = "<!-- BEGIN HARNESS RESULTS -->"
	EndMarker   = "<!-- END HARNESS RESULTS -->"
)

// Report is one harness run.
type Report struct {
	Size     string  `json:"size"`
	Seed     uint64  `json:"seed"`
	Machine  Machine `json:"machine"`
	Registry string  `json:"registry"`
	Started  string  `json:"started"`
	// Seconds is the wall time of the whole run.
	Seconds  float64          `json:"seconds"`
	Images   []Image          `json:"images"`
	Tiers    []tierlat.Result `json:"tiers"`
	TierRSS  map[string]int64 `json:"tier_peak_rss_kib"`
	Pipeline []Scenario       `json:"pipeline"`
	Ratios   []Ratio          `json:"ratios"`
	Floors   []FloorRatio     `json:"floors,omitempty"`
	// Goals are issue 18's acceptance ratios, each measured in this run.
	Goals []Goal `json:"goals,omitempty"`
	// Remote says what served the shared REAPI tier, when one ran.
	Remote string `json:"remote,omitempty"`
	// Compare, when set, compares this run's medians with an earlier run.
	Compare *Comparison `json:"compare,omitempty"`
}

// Machine names the machine a run was made on.
type Machine struct {
	CPU        string `json:"cpu"`
	CPUs       int    `json:"cpus"`
	Kernel     string `json:"kernel"`
	MemMiB     int64  `json:"mem_mib"`
	LoadBefore string `json:"load_before"`
	LoadAfter  string `json:"load_after"`
	// StealPercent is the share of the machine's CPU time stolen by the
	// host during the run (virtual machines; 0 elsewhere).
	StealPercent float64 `json:"steal_percent"`
	// Scratch is the filesystem the jobs wrote to.
	Scratch string `json:"scratch,omitempty"`
}

// Image is a synthetic image of the run.
type Image struct {
	Name              string  `json:"name"`
	Ref               string  `json:"ref"`
	Digest            string  `json:"digest"`
	Compression       string  `json:"compression"`
	Profile           string  `json:"profile,omitempty"`
	Layers            int     `json:"layers"`
	Files             int     `json:"files"`
	UncompressedBytes int64   `json:"uncompressed_bytes"`
	CompressedBytes   int64   `json:"compressed_bytes"`
	Seconds           float64 `json:"generate_push_seconds"`
}

// Scenario is one pipeline scenario on one image over all repetitions.
type Scenario struct {
	Name  string `json:"name"`
	Image string `json:"image"`
	Tool  string `json:"tool,omitempty"`
	// Samples are the durations measured (ns), one per repetition for the
	// pipeline scenarios, many for the sub-millisecond ones.
	Samples []float64 `json:"samples_ns"`
	Median  float64   `json:"median_ns"`
	Min     float64   `json:"min_ns"`
	Max     float64   `json:"max_ns"`
	P95     float64   `json:"p95_ns,omitempty"`
	// MBps is the image's uncompressed size over the median (0 when the
	// scenario does not process the image's bytes).
	MBps float64 `json:"mb_per_s,omitempty"`
	// PeakRSSKiB is the largest peak RSS of the child processes that ran
	// the scenario (getrusage maxrss; a child's own children included).
	PeakRSSKiB int64 `json:"peak_rss_kib"`
	// CPU is the CPU time (user+system, ns) of each repetition's child
	// process and the tools it ran, setup included; CPUMedian their median.
	// On a machine shared with other work it varies less than wall time.
	CPU       []float64 `json:"cpu_ns,omitempty"`
	CPUMedian float64   `json:"cpu_median_ns,omitempty"`
	// BlobGetsMax and BlobGetsPerBlob: registry GETs per blob in one
	// repetition (max over blobs, and mean).
	BlobGetsMax     int     `json:"blob_gets_max,omitempty"`
	BlobGetsPerBlob float64 `json:"blob_gets_per_blob,omitempty"`
	Note            string  `json:"note,omitempty"`
}

// Ratio is a peer's median over Strata's median on one image (above 1:
// Strata is faster).
type Ratio struct {
	Scenario string  `json:"scenario"`
	Peer     string  `json:"peer"`
	Image    string  `json:"image"`
	Tool     string  `json:"tool"`
	Ratio    float64 `json:"peer_over_strata"`
}

// FloorRatio is a Strata scenario's median over the machine's floor for it
// (see pipeline.OverlayFloor): 1 would be a perfect pipeline.
type FloorRatio struct {
	Scenario string  `json:"scenario"`
	Floor    string  `json:"floor"`
	Image    string  `json:"image"`
	Ratio    float64 `json:"strata_over_floor"`
}

// Goal is one acceptance ratio: Scenario's median over Versus's median on
// Image, both measured in the same run, against its target Max (and, when
// MaxRSSKiB is set, Scenario's peak RSS against it).
type Goal struct {
	Name       string  `json:"name"`
	Image      string  `json:"image"`
	Scenario   string  `json:"scenario"`
	Versus     string  `json:"versus"`
	Median     float64 `json:"median_ns"`
	VsMedian   float64 `json:"versus_median_ns"`
	Ratio      float64 `json:"ratio"`
	Max        float64 `json:"max"`
	PeakRSSKiB int64   `json:"peak_rss_kib,omitempty"`
	MaxRSSKiB  int64   `json:"max_rss_kib,omitempty"`
	Met        bool    `json:"met"`
}

// NewGoal compares a with b against max (and a's peak RSS against
// maxRSSMiB when it is not 0).
func NewGoal(name, image string, a, b Scenario, max float64, maxRSSMiB int64) Goal {
	g := Goal{Name: name, Image: image, Scenario: a.Name, Versus: b.Name, Median: a.Median, VsMedian: b.Median, Max: max}
	if b.Median > 0 {
		g.Ratio = a.Median / b.Median
	}
	g.Met = b.Median > 0 && g.Ratio <= max
	if maxRSSMiB > 0 {
		g.PeakRSSKiB, g.MaxRSSKiB = a.PeakRSSKiB, maxRSSMiB<<10
		g.Met = g.Met && a.PeakRSSKiB <= g.MaxRSSKiB
	}
	return g
}

// Comparison compares medians with an earlier run.
type Comparison struct {
	Previous string          `json:"previous"`
	Rows     []ComparisonRow `json:"rows"`
}

// ComparisonRow is one scenario (or tier measurement) in both runs.
type ComparisonRow struct {
	Name     string  `json:"name"`
	Previous float64 `json:"previous_ns"`
	Current  float64 `json:"current_ns"`
	// DiffPct is (current-previous)/previous in percent.
	DiffPct float64 `json:"diff_pct"`
}

// Read reads a report written by Write.
func Read(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("report: %s: %w", path, err)
	}
	return &r, nil
}

// CompareWith fills r.Compare from prev: every pipeline scenario median and
// every tier p50 present in both.
func (r *Report) CompareWith(prev *Report, prevName string) {
	c := &Comparison{Previous: prevName}
	old := map[string]float64{}
	for _, s := range prev.Pipeline {
		old[s.Image+" "+s.Name] = s.Median
		old[s.Image+" "+s.Name+" (CPU)"] = s.CPUMedian
	}
	for _, t := range prev.Tiers {
		old[tierKey(t)] = t.P50
	}
	add := func(k string, cur float64) {
		p, ok := old[k]
		if !ok || p <= 0 {
			return
		}
		c.Rows = append(c.Rows, ComparisonRow{Name: k, Previous: p, Current: cur, DiffPct: 100 * (cur - p) / p})
	}
	for _, s := range r.Pipeline {
		add(s.Image+" "+s.Name, s.Median)
	}
	for _, s := range r.Pipeline {
		add(s.Image+" "+s.Name+" (CPU)", s.CPUMedian)
	}
	for _, t := range r.Tiers {
		add(tierKey(t), t.P50)
	}
	r.Compare = c
}

func tierKey(t tierlat.Result) string {
	return fmt.Sprintf("tier %s %s %s (p50)", t.Backend, t.Op, FormatSize(t.Size))
}

// Write writes results.json, results.md and the SVG charts into dir and
// returns the Markdown.
func (r *Report) Write(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644); err != nil {
		return "", err
	}
	charts, err := r.writeCharts(dir)
	if err != nil {
		return "", err
	}
	var md bytes.Buffer
	r.Markdown(&md, charts)
	if err := os.WriteFile(filepath.Join(dir, "results.md"), md.Bytes(), 0o644); err != nil {
		return "", err
	}
	return md.String(), nil
}

// Charts are the SVG files written, by base name.
func (r *Report) writeCharts(dir string) ([]string, error) {
	var names []string
	write := func(name string, d *svg.Doc) error {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if _, err := d.WriteTo(f); err != nil {
			f.Close()
			return err
		}
		names = append(names, name)
		return f.Close()
	}
	ops := []string{}
	for _, t := range r.Tiers {
		if !slices.Contains(ops, t.Op) {
			ops = append(ops, t.Op)
		}
	}
	for _, op := range ops {
		var rows []svg.Range
		for _, t := range r.Tiers {
			if t.Op == op {
				rows = append(rows, svg.Range{Label: t.Backend + " " + FormatSize(t.Size), P50: t.P50, P95: t.P95, P99: t.P99})
			}
		}
		name := "tiers-" + strings.NewReplacer("+", "-", " ", "-").Replace(op) + ".svg"
		if err := write(name, svg.Latency("Tier latency: "+op, rows)); err != nil {
			return nil, err
		}
	}
	var bars []svg.Bar
	for _, s := range r.Pipeline {
		if s.Median < 1e6 { // sub-millisecond ones would be invisible
			continue
		}
		bars = append(bars, svg.Bar{Label: s.Image + " " + s.Name, Value: s.Median / 1e9, Min: s.Min / 1e9, Max: s.Max / 1e9, Peer: strings.Contains(s.Name, "/peer-")})
	}
	if err := write("pipeline.svg", svg.Bars("Pipeline: median time vs peers", "s", bars)); err != nil {
		return nil, err
	}
	return names, nil
}

// Markdown writes the report as Markdown; charts are linked when given.
func (r *Report) Markdown(w io.Writer, charts []string) {
	m := r.Machine
	fmt.Fprintf(w, "Run: `-size %s -seed %d`, started %s, %.0f s in all.  \n", r.Size, r.Seed, r.Started, r.Seconds)
	fmt.Fprintf(w, "Machine: %s, %d CPUs, %d MiB RAM, kernel %s; load average before %s, after %s; CPU time stolen by the host during the run: %.1f%%.  \n", m.CPU, m.CPUs, m.MemMiB, m.Kernel, m.LoadBefore, m.LoadAfter, m.StealPercent)
	if m.Scratch != "" {
		fmt.Fprintf(w, "Jobs wrote to %s.  \n", m.Scratch)
	}
	fmt.Fprintf(w, "Registry: %s, reached through a counting proxy on 127.0.0.1.", r.Registry)
	if r.Remote != "" {
		fmt.Fprintf(w, "  \nShared REAPI tier: %s.", r.Remote)
	}
	fmt.Fprint(w, "\n\n")

	if len(r.Goals) > 0 {
		fmt.Fprintln(w, "### Goals (issue 18; ratio = Strata median / the other side's median, same run)")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| goal | image | Strata | vs | medians | ratio | target | peak RSS | met |")
		fmt.Fprintln(w, "|---|---|---|---|---:|---:|---:|---:|---|")
		for _, g := range r.Goals {
			rss, target := "-", fmt.Sprintf("<= %.2f", g.Max)
			if g.MaxRSSKiB > 0 {
				rss = MiB(g.PeakRSSKiB<<10) + " (<= " + MiB(g.MaxRSSKiB<<10) + ")"
			}
			met := "no"
			if g.Met {
				met = "yes"
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s / %s | %.2f | %s | %s | %s |\n", g.Name, g.Image, g.Scenario, g.Versus, svg.FormatNS(g.Median), svg.FormatNS(g.VsMedian), g.Ratio, target, rss, met)
		}
		fmt.Fprintln(w)
	}

	fmt.Fprintln(w, "### Images")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| image | layers | files | uncompressed | compressed | compression | digest |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---|---|")
	for _, im := range r.Images {
		comp := im.Compression
		if im.Profile != "" {
			comp += ", " + im.Profile + " profile"
		}
		fmt.Fprintf(w, "| %s | %d | %d | %s | %s | %s | `%.19s…` |\n", im.Name, im.Layers, im.Files, MiB(im.UncompressedBytes), MiB(im.CompressedBytes), comp, im.Digest)
	}
	fmt.Fprintln(w)

	fmt.Fprintln(w, "### Pipeline")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "CPU is the user+system time of the scenario's child process and the tools it ran (setup included), median over repetitions; peak RSS is the largest over repetitions.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| image | scenario | reps | median | min | max | MB/s | CPU (median) | peak RSS | registry GETs per blob | tool / note |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
	for _, s := range r.Pipeline {
		mbps, gets := "-", "-"
		if s.MBps > 0 {
			mbps = fmt.Sprintf("%.0f", s.MBps)
		}
		if s.BlobGetsMax > 0 {
			gets = fmt.Sprintf("%.2f (max %d)", s.BlobGetsPerBlob, s.BlobGetsMax)
		}
		median := svg.FormatNS(s.Median)
		if s.P95 > 0 {
			median += " (p95 " + svg.FormatNS(s.P95) + ")"
		}
		note := strings.Trim(s.Tool+"; "+s.Note, "; ")
		cpu := "-"
		if s.CPUMedian > 0 {
			cpu = svg.FormatNS(s.CPUMedian)
		}
		fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", s.Image, s.Name, len(s.Samples), median, svg.FormatNS(s.Min), svg.FormatNS(s.Max), mbps, cpu, MiB(s.PeakRSSKiB<<10), gets, note)
	}
	fmt.Fprintln(w)

	if len(r.Ratios) > 0 {
		fmt.Fprintln(w, "### Peers (ratio = peer median / Strata median; above 1 means Strata is faster)")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| image | Strata scenario | peer | ratio | peer tool |")
		fmt.Fprintln(w, "|---|---|---|---:|---|")
		for _, x := range r.Ratios {
			fmt.Fprintf(w, "| %s | %s | %s | %.2fx | %s |\n", x.Image, x.Scenario, x.Peer, x.Ratio, x.Tool)
		}
		fmt.Fprintln(w)
	}

	if len(r.Floors) > 0 {
		fmt.Fprintln(w, "### Floor (ratio = Strata median / floor median; 1 would be a perfect pipeline)")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| image | Strata scenario | floor | ratio |")
		fmt.Fprintln(w, "|---|---|---|---:|")
		for _, x := range r.Floors {
			fmt.Fprintf(w, "| %s | %s | %s | %.2fx |\n", x.Image, x.Scenario, x.Floor, x.Ratio)
		}
		fmt.Fprintln(w)
	}

	fmt.Fprintln(w, "### Tiers")
	fmt.Fprintln(w)
	procs := 1
	for _, t := range r.Tiers {
		procs = max(procs, t.Processes)
	}
	fmt.Fprint(w, "Operations quicker than 5 µs are timed in batches (samples x batch): a sample is a batch's mean.")
	if procs > 1 {
		fmt.Fprintf(w, " Each backend was measured in %d processes, one after another in rounds; a row gives the median of their figures and the sum of their samples.", procs)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| backend | op | size | samples | p50 | p95 | p99 | MB/s | allocs/op |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, t := range r.Tiers {
		mbps := "-"
		if t.MBps > 0 {
			mbps = fmt.Sprintf("%.0f", t.MBps)
		}
		samples := fmt.Sprint(t.Samples)
		if t.Batch > 1 {
			samples += fmt.Sprintf(" x %d", t.Batch)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %.1f |\n", t.Backend, t.Op, FormatSize(t.Size), samples, svg.FormatNS(t.P50), svg.FormatNS(t.P95), svg.FormatNS(t.P99), mbps, t.AllocsPerOp)
	}
	fmt.Fprintln(w)
	if len(r.TierRSS) > 0 {
		keys := make([]string, 0, len(r.TierRSS))
		for k := range r.TierRSS {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %s", k, MiB(r.TierRSS[k]<<10)))
		}
		fmt.Fprintf(w, "Peak RSS of the tier measurements (one child process per backend): %s.\n\n", strings.Join(parts, ", "))
	}

	if r.Compare != nil && len(r.Compare.Rows) > 0 {
		fmt.Fprintf(w, "### Stability: this run against %s\n\n", r.Compare.Previous)
		fmt.Fprintln(w, "| measurement | previous median | this median | difference |")
		fmt.Fprintln(w, "|---|---:|---:|---:|")
		type count struct{ within, all int }
		counts := map[string]*count{}
		var kinds []string
		for _, c := range r.Compare.Rows {
			kind := "pipeline wall-time medians"
			switch {
			case strings.HasPrefix(c.Name, "tier "):
				kind = "tier p50s"
			case strings.HasSuffix(c.Name, " (CPU)"):
				kind = "pipeline CPU-time medians"
			}
			if counts[kind] == nil {
				counts[kind] = &count{}
				kinds = append(kinds, kind)
			}
			counts[kind].all++
			if math.Abs(c.DiffPct) <= 15 {
				counts[kind].within++
			}
			fmt.Fprintf(w, "| %s | %s | %s | %+.1f%% |\n", c.Name, svg.FormatNS(c.Previous), svg.FormatNS(c.Current), c.DiffPct)
		}
		var parts []string
		for _, k := range kinds {
			parts = append(parts, fmt.Sprintf("%d of %d %s", counts[k].within, counts[k].all, k))
		}
		fmt.Fprintf(w, "\nWithin 15%%: %s.\n\n", strings.Join(parts, ", "))
	}
	if len(charts) > 0 {
		fmt.Fprint(w, "Charts:")
		for _, c := range charts {
			fmt.Fprintf(w, " [%s](%s)", c, c)
		}
		fmt.Fprintln(w)
	}
}

// UpdateDoc replaces the text between BeginMarker and EndMarker in the
// file at path with section.
func UpdateDoc(path, section string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	i := strings.Index(s, BeginMarker)
	j := strings.Index(s, EndMarker)
	if i < 0 || j < i {
		return fmt.Errorf("report: %s has no %q ... %q section", path, BeginMarker, EndMarker)
	}
	out := s[:i+len(BeginMarker)] + "\n" + strings.TrimSpace(section) + "\n" + s[j:]
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(out), 0o644); err != nil {
		return err
	}
	return errors.Join(os.Rename(tmp, path))
}

// SortScenarios orders scenarios by image, then by the order given.
func SortScenarios(s []Scenario, order []string) {
	slices.SortStableFunc(s, func(a, b Scenario) int {
		return cmp.Or(cmp.Compare(a.Image, b.Image), cmp.Compare(idx(order, a.Name), idx(order, b.Name)))
	})
}

func idx(order []string, s string) int {
	if i := slices.Index(order, s); i >= 0 {
		return i
	}
	return len(order)
}

// FormatSize formats a blob size (1KiB, 64MiB).
func FormatSize(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// MiB formats bytes in MiB.
func MiB(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
