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
