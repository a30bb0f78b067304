package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"github.com/strata-oci/strata/internal/testenv"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/strata-oci/strata/benchmarks/internal/pipeline"
	"github.com/strata-oci/strata/benchmarks/internal/report"
	"github.com/strata-oci/strata/benchmarks/internal/tierlat"
)

// TestMain lets the test binary serve as the harness's child process.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == childArg {
		os.Exit(childMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// requireRoot skips without root (overlay whiteouts are 0:0 character
// devices, which only root can make), but fails under CI=true.
func requireRoot(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t, "the smoke harness (overlay materialization with whiteouts)")
}

// TestSmokeHarness runs the whole smoke harness end to end and checks that
// its outputs exist and parse: the JSON decodes with every scenario
// measured, each SVG is well-formed XML with an svg root, the Markdown holds
// the tables, and -update-doc rewrites only the marked section. No timing is
// asserted.
func TestSmokeHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the smoke harness takes about 10 s")
	}
	requireRoot(t)
	out := filepath.Join(t.TempDir(), "out")
	doc := filepath.Join(t.TempDir(), "benchmarks.md")
	const before, after = "# Doc\n\nintro\n\n", "\n\nafter the results\n"
	if err := os.WriteFile(doc, []byte(before+report.BeginMarker+"\nold results\n"+report.EndMarker+after), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	args := []string{"-size", "smoke", "-out", out, "-work", t.TempDir(), "-update-doc", "-doc", doc}
	if code := run(context.Background(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("harness exited %d:\n%s", code, stderr.String())
	}

	r, err := report.Read(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Registry == "" || r.Remote == "" || r.Machine.CPUs < 1 || len(r.Images) != 3 {
		t.Errorf("report header: registry %q, REAPI tier %q, %d CPUs, %d images", r.Registry, r.Remote, r.Machine.CPUs, len(r.Images))
	}
	got := map[string]report.Scenario{}
	for _, s := range r.Pipeline {
		got[s.Image+" "+s.Name] = s
		if len(s.Samples) == 0 || s.Median <= 0 || s.PeakRSSKiB <= 0 {
			t.Errorf("%s %s: %d samples, median %v, peak RSS %d KiB", s.Image, s.Name, len(s.Samples), s.Median, s.PeakRSSKiB)
		}
	}
	want := append([]string{pipeline.ResolveWarm, pipeline.OverlayPresent}, pipeline.Scenarios...)
	for _, name := range want {
		if _, ok := got["bench/smoke-gzip "+name]; !ok {
			t.Errorf("scenario %s missing on bench/smoke-gzip", name)
		}
	}
	// The small-file image runs overlay cold, its peer and floor, and ext4
	// cold with the classic route.
	for _, name := range []string{pipeline.OverlayCold, pipeline.OverlayColdPeer, pipeline.OverlayFloor, pipeline.Ext4Cold, pipeline.Ext4ColdPeer} {
		if _, ok := got["bench/smoke-debian "+name]; !ok {
			t.Errorf("scenario %s missing on bench/smoke-debian", name)
		}
	}
	// Every image blob is downloaded once per cold fetch (and cold ext4
	// conversion), and once in all by the executors of the dedup scenario.
	for _, name := range []string{pipeline.FetchCold, pipeline.Dedup, pipeline.Ext4Cold} {
		if s := got["bench/smoke-gzip "+name]; s.BlobGetsMax != 1 {
			t.Errorf("%s: a blob was downloaded %d times, want 1", name, s.BlobGetsMax)
		}
	}
	// The cache hits from the shared tier download no blob from the
	// registry (their jobs fail otherwise, so they are only present).
	for _, name := range pipeline.NeedsRemote {
		if s := got["bench/smoke-gzip "+name]; s.BlobGetsMax != 0 || s.Median <= 0 {
			t.Errorf("%s: %d registry GETs of a blob, median %v", name, s.BlobGetsMax, s.Median)
		}
	}
	// Every goal is computed where both its sides ran: 7 on the image that
	// runs everything, the two overlay ones and the ext4 cold one on the
	// small-file image, the fetch and overlay peers on the zstd image.
	goals := map[string]int{}
	for _, g := range r.Goals {
		goals[g.Image]++
		if g.Ratio <= 0 || g.Max <= 0 || g.Met != (g.Ratio <= g.Max && (g.MaxRSSKiB == 0 || g.PeakRSSKiB <= g.MaxRSSKiB)) {
			t.Errorf("goal %+v", g)
		}
	}
	if goals["bench/smoke-gzip"] != len(pipeline.Goals) || goals["bench/smoke-debian"] != 3 || goals["bench/smoke-zstd"] != 2 {
		t.Errorf("goals per image %v, want %d, 3 and 2", goals, len(pipeline.Goals))
	}
	if len(r.Ratios) == 0 {
		t.Error("no peer ratios")
	}
	for _, name := range []string{pipeline.OverlayFloorLocal, pipeline.OverlayFloorDownload, pipeline.OverlayFloorDecompress, pipeline.OverlayFloorCreate} {
		if s, ok := got["bench/smoke-gzip "+name]; !ok || len(s.Samples) != 2 {
			t.Errorf("floor part %s: %d samples, want 2", name, len(s.Samples))
		}
	}
	floors := map[string]string{}
	for _, f := range r.Floors {
		if f.Ratio > 0 {
			floors[f.Image+" "+f.Scenario] = f.Floor
		}
	}
	if floors["bench/smoke-gzip "+pipeline.OverlayCold] != pipeline.OverlayFloor || floors["bench/smoke-gzip "+pipeline.OverlayWarm] != pipeline.OverlayFloorLocal {
		t.Errorf("floor ratios %+v, want overlay-cold over overlay-floor and overlay-warm over overlay-floor/local", r.Floors)
	}
	// The floor's download went through the proxy like everything else.
	if s := got["bench/smoke-gzip "+pipeline.OverlayFloor]; s.Median <= 0 {
		t.Errorf("overlay-floor: %+v", s)
	}
	// As root, the jobs write to a fresh journaled ext4 of the run's own,
	// which is gone afterwards.
	if !strings.Contains(r.Machine.Scratch, "fresh ext4 (journaled") {
		t.Errorf("jobs wrote to %q, want the run's own loop-mounted ext4", r.Machine.Scratch)
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(b), "strata-bench-fs-") {
		t.Errorf("the scratch filesystem is still mounted:\n%s", b)
	}
	ops := map[string]bool{}
	for _, tr := range r.Tiers {
		ops[tr.Backend+" "+tr.Op] = true
		if tr.Samples < 5 || tr.P50 <= 0 || tr.P99 < tr.P50 {
			t.Errorf("tier row %+v", tr)
		}
	}
	for _, k := range []string{"memory stat", "memory open+read", "memory put", "disk stat", "disk put", "stack open+read", "file+sha256 open+read"} {
		if !ops[k] {
			t.Errorf("tier measurement %q missing", k)
		}
	}

	svgs, _ := filepath.Glob(filepath.Join(out, "*.svg"))
	if len(svgs) < 2 {
		t.Fatalf("SVG charts: %v", svgs)
	}
	for _, p := range svgs {
		if err := wellFormedSVG(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}

	md, err := os.ReadFile(filepath.Join(out, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"| image | scenario | reps | median |", "|---|---|---:|", "| backend | op | size |", "| bench/smoke-gzip | overlay-cold |", "| goal | image | Strata | vs |", "| cache hit from the REAPI tier vs cold from the registry | bench/smoke-gzip | fetch-reapi-hit | fetch-cold |"} {
		if !bytes.Contains(md, []byte(s)) {
			t.Errorf("results.md lacks %q", s)
		}
	}
	if stdout.String() != string(md) {
		t.Error("stdout is not the Markdown report")
	}
	d, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	ds := string(d)
	if !strings.HasPrefix(ds, before+report.BeginMarker+"\n") || !strings.HasSuffix(ds, report.EndMarker+after) ||
		strings.Contains(ds, "old results") || !strings.Contains(ds, "| bench/smoke-gzip | overlay-cold |") {
		t.Errorf("-update-doc result:\n%s", ds)
	}
	if strings.Contains(ds, ".svg") {
		t.Error("the document links charts that live in -out")
	}
}

// -only runs the named scenarios alone, and no tier measurement.
func TestOnly(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: runs the smoke harness")
	}
	requireRoot(t)
	out := filepath.Join(t.TempDir(), "out")
	var stdout, stderr bytes.Buffer
	args := []string{"-size", "smoke", "-out", out, "-work", t.TempDir(), "-only", pipeline.OverlayCold + "," + pipeline.FetchWarm, "-scratch", "dir"}
	if code := run(context.Background(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("harness exited %d:\n%s", code, stderr.String())
	}
	r, err := report.Read(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range r.Pipeline {
		names = append(names, s.Image+" "+s.Name)
	}
	slices.Sort(names)
	want := []string{"bench/smoke-debian overlay-cold", "bench/smoke-gzip fetch-warm", "bench/smoke-gzip overlay-cold", "bench/smoke-gzip resolve-warm", "bench/smoke-zstd overlay-cold"}
	if !slices.Equal(names, want) || len(r.Tiers) != 0 {
		t.Errorf("scenarios %v and %d tier rows; want %v and none", names, len(r.Tiers), want)
	}
	if !strings.HasPrefix(r.Machine.Scratch, "a directory on ") {
		t.Errorf("-scratch dir: jobs wrote to %q", r.Machine.Scratch)
	}
}

func wellFormedSVG(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	dec := xml.NewDecoder(f)
	root := ""
	elems := 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if se, ok := tok.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Local
			}
			elems++
		}
	}
	if root != "svg" || elems < 3 {
		return errors.New("not an SVG chart: root " + root)
	}
	return nil
}

func TestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		desc string
		args []string
	}{
		{"unknown size", []string{"-size", "huge"}},
		{"unknown flag", []string{"-nope"}},
		{"unknown scenario", []string{"-only", "overlay-cold,teleport"}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), tc.args, &stdout, &stderr); code != 2 {
				t.Errorf("exit %d, want 2 (stderr %q)", code, stderr.String())
			}
		})
	}
}

func TestMergeTiers(t *testing.T) {
	run := func(stat, put float64, batch int) []tierlat.Result {
		return []tierlat.Result{
			{Backend: "memory", Op: "stat", Size: 1024, Samples: 10, P50: stat, P95: stat * 2, P99: stat * 3, Batch: batch},
			{Backend: "memory", Op: "put", Size: 1024, Samples: 5, P50: put, P95: put, P99: put, MBps: 1024 / put * 1e3, AllocsPerOp: 2},
		}
	}
	got := mergeTiers([][]tierlat.Result{run(210, 9000, 20), run(125, 8000, 30), run(120, 20000, 25)})
	if len(got) != 2 {
		t.Fatalf("%d rows, want 2", len(got))
	}
	st, pt := got[0], got[1]
	if st.P50 != 125 || st.P95 != 250 || st.P99 != 375 || st.Samples != 30 || st.Batch != 30 || st.Processes != 3 {
		t.Errorf("stat merged to %+v, want the medians (125, 250, 375), 30 samples, batch 30, 3 processes", st)
	}
	if pt.P50 != 9000 || pt.Samples != 15 || pt.AllocsPerOp != 2 {
		t.Errorf("put merged to %+v, want p50 9000, 15 samples", pt)
	}
}

// TestFleet: -fleet measures 1, 4 and 16 executors with and without
// leases; with leases a layer is pulled at most twice by the fleet, and
// without them 16 executors pull it more often than that (the comparison
// is live).
func TestFleet(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"-fleet", "-reps", "1"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	rows := map[string]float64{}
	for _, line := range strings.Split(out.String(), "\n") {
		var n int
		var leases string
		var gets float64
		if _, err := fmt.Sscanf(line, "| %d | %s | %f |", &n, &leases, &gets); err == nil {
			rows[fmt.Sprintf("%d/%s", n, leases)] = gets
		}
	}
	if len(rows) != 6 {
		t.Fatalf("%d rows, want 6:\n%s", len(rows), out.String())
	}
	for _, n := range []int{1, 4, 16} {
		if g := rows[fmt.Sprintf("%d/true", n)]; g > 2 {
			t.Errorf("%d executors with leases: %.2f GETs per layer, want at most 2", n, g)
		}
	}
	if g := rows["16/false"]; g <= 2 {
		t.Errorf("16 executors without leases: %.2f GETs per layer; the control shows no difference", g)
	}
}
