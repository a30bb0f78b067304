package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-oci/strata"
	"github.com/strata-oci/strata/internal/admin"
)

// TestVerifyOverlayAndGCLeftovers: verify --overlay finds a modified layer
// (exit 1), drops it, and the next materialize extracts it again; gc
// removes what a killed conversion left in ext4-dir/tmp and says so.
func TestVerifyOverlayAndGCLeftovers(t *testing.T) {
	f := newFixture(t, 16<<10, 2)
	ov := decode[overlayResult](t, must(t, f.args("materialize", f.ref, "--format", "overlay", "--json")...))
	if out := must(t, f.args("verify", "--overlay")...); !strings.Contains(out, "and 2 overlay layers: 6 ok, 0 corrupt or missing, 0 unverifiable") {
		t.Fatalf("clean verify --overlay: %s", out)
	}
	planted := filepath.Join(ov.LowerDirs[0], "planted")
	if err := os.WriteFile(planted, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out := must(t, f.args("verify")...); strings.Contains(out, "overlay") {
		t.Fatalf("verify without --overlay looked at layers: %s", out)
	}
	r := blobctl(t, "", f.args("verify", "--overlay")...)
	if r.code != exitCheckFailed || !strings.Contains(r.stdout, "added planted") || !strings.Contains(r.stdout, "removed") {
		t.Fatalf("verify --overlay of a tampered layer: exit %d, want %d\n%s%s", r.code, exitCheckFailed, r.stdout, r.stderr)
	}
	if _, err := os.Stat(ov.LowerDirs[0]); !os.IsNotExist(err) {
		t.Fatalf("tampered layer dir still there: %v", err)
	}
	again := decode[overlayResult](t, must(t, f.args("materialize", f.ref, "--format", "overlay", "--json")...))
	if _, err := os.Stat(filepath.Join(again.LowerDirs[0], "planted")); !os.IsNotExist(err) {
		t.Fatalf("re-extracted layer holds the planted file: %v", err)
	}
	if r := blobctl(t, "", f.args("verify", "--overlay")...); r.code != 0 {
		t.Fatalf("verify --overlay after re-extraction: exit %d\n%s", r.code, r.stdout)
	}

	// A killed conversion's temporary image.
	tmp := filepath.Join(f.root, "ext4", "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	left := filepath.Join(tmp, "convert-1.ext4")
	if err := os.WriteFile(left, []byte(strings.Repeat("x", 1<<20)), 0o600); err != nil {
		t.Fatal(err)
	}
	gc := decode[admin.GCResult](t, must(t, f.args("gc", "--json")...))
	if gc.Ext4TempFiles != 1 || gc.Ext4TempBytes < 1<<20 {
		t.Fatalf("gc: %+v, want 1 ext4 temp file of 1 MiB removed", gc)
	}
	if _, err := os.Stat(left); !os.IsNotExist(err) {
		t.Fatalf("leftover still there after gc: %v", err)
	}
	du := decode[[]admin.UsageRecord](t, must(t, f.args("du", "--json")...))
	for _, u := range du {
		if u.Tier == admin.UsageExt4 && u.Budget != int64(strata.Default().Ext4Budget) {
			t.Errorf("du ext4 budget %d, want %d", u.Budget, strata.Default().Ext4Budget)
		}
	}
}
