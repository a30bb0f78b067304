package report

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-oci/strata/benchmarks/internal/tierlat"
)

func TestCompareWith(t *testing.T) {
	prev := &Report{
		Pipeline: []Scenario{{Name: "fetch-cold", Image: "i", Median: 100}, {Name: "gone", Image: "i", Median: 5}},
		Tiers:    []tierlat.Result{{Backend: "memory", Op: "stat", Size: 1024, P50: 200}},
	}
	cur := &Report{
		Pipeline: []Scenario{{Name: "fetch-cold", Image: "i", Median: 110}, {Name: "new", Image: "i", Median: 1}},
		Tiers:    []tierlat.Result{{Backend: "memory", Op: "stat", Size: 1024, P50: 150}},
	}
	cur.CompareWith(prev, "run 1")
	want := map[string]float64{"i fetch-cold": 10, "tier memory stat 1KiB (p50)": -25}
	if len(cur.Compare.Rows) != len(want) {
		t.Fatalf("rows %+v", cur.Compare.Rows)
	}
	for _, r := range cur.Compare.Rows {
		if w, ok := want[r.Name]; !ok || math.Abs(r.DiffPct-w) > 1e-9 {
			t.Errorf("row %+v, want diff %v", r, w)
		}
	}
	var b strings.Builder
	cur.Markdown(&b, nil)
	if !strings.Contains(b.String(), "Within 15%: 1 of 1 pipeline wall-time medians, 0 of 1 tier p50s.") {
		t.Errorf("markdown:\n%s", b.String())
	}
}

func TestUpdateDoc(t *testing.T) {
	for _, tc := range []struct {
		desc, doc, want string
		ok              bool
	}{
		{"replaces the section", "a\n" + BeginMarker + "\nold\n" + EndMarker + "\nz\n", "a\n" + BeginMarker + "\nnew\n" + EndMarker + "\nz\n", true},
		{"empty section", BeginMarker + EndMarker, BeginMarker + "\nnew\n" + EndMarker, true},
		{"no markers", "a\nb\n", "a\nb\n", false},
		{"markers reversed", EndMarker + "x" + BeginMarker, EndMarker + "x" + BeginMarker, false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "doc.md")
			if err := os.WriteFile(p, []byte(tc.doc), 0o644); err != nil {
				t.Fatal(err)
			}
			err := UpdateDoc(p, "\nnew\n\n")
			if (err == nil) != tc.ok {
				t.Fatalf("err %v, want ok=%v", err, tc.ok)
			}
			b, _ := os.ReadFile(p)
			if string(b) != tc.want {
				t.Errorf("got %q, want %q", b, tc.want)
			}
		})
	}
}

// TestNewGoal: a goal is met when the ratio is within its target and, when
// it bounds peak RSS, the Strata side's peak RSS is too; a comparison side
// that measured nothing never meets it.
func TestNewGoal(t *testing.T) {
	a := Scenario{Name: "ext4-cold", Median: 30, PeakRSSKiB: 200 << 10}
	b := Scenario{Name: "ext4-cold/peer-classic", Median: 100}
	for _, tc := range []struct {
		desc      string
		a, b      Scenario
		max       float64
		maxRSSMiB int64
		ratio     float64
		met       bool
	}{
		{"within the target", a, b, 0.33, 0, 0.3, true},
		{"exactly the target", a, b, 0.3, 0, 0.3, true},
		{"over the target", a, b, 0.25, 0, 0.3, false},
		{"within the target and the RSS bound", a, b, 0.33, 256, 0.3, true},
		{"within the target, over the RSS bound", a, b, 0.33, 128, 0.3, false},
		{"nothing measured on the other side", a, Scenario{Name: "x"}, 0.33, 0, 0, false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			g := NewGoal("g", "img", tc.a, tc.b, tc.max, tc.maxRSSMiB)
			if math.Abs(g.Ratio-tc.ratio) > 1e-9 || g.Met != tc.met {
				t.Errorf("ratio %v met %v, want %v %v", g.Ratio, g.Met, tc.ratio, tc.met)
			}
			if tc.maxRSSMiB > 0 && (g.PeakRSSKiB != tc.a.PeakRSSKiB || g.MaxRSSKiB != tc.maxRSSMiB<<10) {
				t.Errorf("RSS %d of %d KiB", g.PeakRSSKiB, g.MaxRSSKiB)
			}
		})
	}
	r := &Report{Goals: []Goal{NewGoal("ext4 cold vs classic", "img", a, b, 0.33, 256), NewGoal("fetch", "img", a, b, 0.2, 0)}}
	var sb strings.Builder
	r.Markdown(&sb, nil)
	for _, want := range []string{
		"| ext4 cold vs classic | img | ext4-cold | ext4-cold/peer-classic | 30ns / 100ns | 0.30 | <= 0.33 | 200.0 MiB (<= 256.0 MiB) | yes |",
		"| fetch | img | ext4-cold | ext4-cold/peer-classic | 30ns / 100ns | 0.30 | <= 0.20 | - | no |",
	} {
		if !strings.Contains(sb.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, sb.String())
		}
	}
}
