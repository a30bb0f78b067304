package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-oci/strata"
	"github.com/strata-oci/strata/internal/admin"
	"github.com/strata-oci/strata/internal/registrytest"
)

// TestEveryCommandDistribution runs each command once against the real
// registry (Debian's docker-registry), as the operator would.
func TestEveryCommandDistribution(t *testing.T) {
	reg := registrytest.StartDistribution(t, registrytest.DistributionOptions{})
	f := newFixtureAt(t, reg.Host, 64<<10, 3)
	digests, blobs := f.layers(t)

	res := decode[fetchResult](t, must(t, f.args("fetch", f.ref, "--json")...))
	for _, b := range res.Blobs {
		if b.Source != "registry" {
			t.Errorf("cold fetch: %s from %q", b.Digest, b.Source)
		}
	}
	ls := decode[struct {
		Blobs []admin.BlobRecord `json:"blobs"`
		Refs  []admin.RefRecord  `json:"refs"`
	}](t, must(t, f.args("ls", "--json")...))
	// Refs: the tag, the proof, and a membership per blob.
	if len(ls.Blobs) != 5 || len(ls.Refs) != 2+5 {
		t.Errorf("ls: %d blobs and %d refs, want 5 and 7", len(ls.Blobs), len(ls.Refs))
	}
	if st := decode[[]admin.BlobRecord](t, must(t, f.args("stat", digests[1], "--json")...)); len(st) != 1 || st[0].Size != int64(len(blobs[1])) {
		t.Errorf("stat: %+v", st)
	}
	if out := must(t, f.args("cat", digests[2])...); out != string(blobs[2]) {
		t.Error("cat: wrong bytes")
	}
	if refs := decode[[]admin.RefRecord](t, must(t, f.args("refs", "--namespace", "proof", "--json")...)); len(refs) != 1 || refs[0].Scope != "anonymous" {
		t.Errorf("refs: %+v", refs)
	}
	out := filepath.Join(t.TempDir(), "img.ext4")
	if r := decode[ext4Result](t, must(t, f.args("materialize", f.ref, "--format", "ext4", "--out", out, "--json")...)); r.Size == 0 {
		t.Errorf("ext4: %+v", r)
	}
	if ov := decode[overlayResult](t, must(t, f.args("materialize", f.ref, "--format", "overlay", "--json")...)); len(ov.LowerDirs) != 3 {
		t.Errorf("overlay: %+v", ov)
	}
	corrupt(t, f.root, digests[0])
	if r := blobctl(t, "", f.args("verify", "--remove")...); r.code != exitCheckFailed || !strings.Contains(r.stdout, digests[0]) {
		t.Errorf("verify: exit %d\n%s", r.code, r.stdout)
	}
	must(t, f.args("fetch", f.ref)...) // refetches the removed layer
	du := decode[[]admin.UsageRecord](t, must(t, f.args("du", "--json")...))
	target := du[1].Bytes / 3
	must(t, f.args("evict", "--to-size", strata.Size(target).String())...)
	if du = decode[[]admin.UsageRecord](t, must(t, f.args("du", "--json")...)); du[1].Bytes > target {
		t.Errorf("evict --to-size %d left %d bytes", target, du[1].Bytes)
	}
	if gc := decode[admin.GCResult](t, must(t, f.args("gc", "--json")...)); gc.Layers != 3 {
		t.Errorf("gc: %+v", gc)
	}
	// Nothing holds the root: blobctl's own registry, with every collector
	// registered (series with labels appear once used).
	if m := must(t, f.args("metrics")...); !strings.Contains(m, "# TYPE strata_fetch_collapsed_total counter") || !strings.Contains(m, "go_goroutines") {
		t.Errorf("metrics:\n%s", m)
	}
}
