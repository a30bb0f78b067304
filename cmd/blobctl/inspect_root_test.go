package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/strata-oci/strata/internal/admin"
	"github.com/strata-oci/strata/internal/registrytest"
)

// layerDirsIntact fails t unless every directory of dirs still exists and
// holds something.
func layerDirsIntact(t *testing.T, when string, dirs []string) {
	t.Helper()
	for _, d := range dirs {
		ents, err := os.ReadDir(d)
		if err != nil || len(ents) == 0 {
			t.Fatalf("%s: layer dir %s: %d entries, %v", when, d, len(ents), err)
		}
	}
}

// Inspection commands with budgets far below what the root holds evict
// nothing: neither blobs (the disk tier's pass on open) nor extracted
// layers (the overlay materializer's pass on open).
func TestInspectionNeverEvicts(t *testing.T) {
	f := newFixture(t, 64<<10, 4)
	must(t, f.args("fetch", f.ref)...)
	ov := decode[overlayResult](t, must(t, f.args("materialize", f.ref, "--format", "overlay", "--json")...))
	before := stripAccess(t, must(t, f.args("ls", "--json")...))
	digests, _ := f.layers(t)
	tiny := []string{"--disk-budget", "1KiB", "--overlay-budget", "1KiB", "--memory", "1KiB", "--memory-max-blob", "1KiB"}
	for _, c := range [][]string{{"du"}, {"ls"}, {"stat", digests[0]}, {"cat", digests[1]}, {"refs"}, {"verify"}, {"metrics"}} {
		must(t, f.args(append(append([]string{}, tiny...), c...)...)...)
		if got := stripAccess(t, must(t, f.args("ls", "--json")...)); got != before {
			t.Fatalf("%s with a 1KiB budget changed the root:\nbefore %s\nafter  %s", c[0], before, got)
		}
		layerDirsIntact(t, c[0]+" with a 1KiB overlay budget", ov.LowerDirs)
	}
	// du reports the budget it was given without applying it.
	du := decode[[]admin.UsageRecord](t, must(t, f.args(append(tiny, "du", "--json")...)...))
	for _, r := range du {
		if r.Tier == admin.TierDisk && (r.Budget != 1<<10 || r.Blobs != int64(2+len(digests))) {
			t.Errorf("du --disk-budget 1KiB: %+v, want budget 1024 and %d blobs", r, 2+len(digests))
		}
	}
}

// A --root that holds no Strata root is a usage error for every inspection
// command, and nothing is created there.
func TestInspectionRefusesMissingRoot(t *testing.T) {
	f := newFixture(t, 4<<10, 1)
	digests, _ := f.layers(t)
	missing := filepath.Join(t.TempDir(), "typo", "root")
	empty := t.TempDir()
	if err := os.Chmod(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{missing, empty} {
		for _, c := range [][]string{{"du"}, {"ls"}, {"stat", digests[0]}, {"cat", digests[0]}, {"refs"}, {"verify"}, {"metrics"}} {
			r := blobctl(t, "", append([]string{"--root", root}, c...)...)
			if r.code != exitUsage || !strings.Contains(r.stderr, "no Strata root at "+root) || !strings.Contains(r.stderr, "--root") {
				t.Errorf("%s --root %s: exit %d, want %d\nstderr: %s", c[0], root, r.code, exitUsage, r.stderr)
			}
		}
	}
	if _, err := os.Stat(filepath.Dir(missing)); !os.IsNotExist(err) {
		t.Errorf("inspecting a missing root created %s: %v", filepath.Dir(missing), err)
	}
	ents, _ := os.ReadDir(empty)
	fi, _ := os.Stat(empty)
	if len(ents) != 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("inspecting an empty directory changed it: %d entries, mode %v", len(ents), fi.Mode().Perm())
	}
}

// The budgets of the process that last used the root are recorded in it,
// and blobctl applies them unless the command line or the config file says
// otherwise.
func TestStoredBudgets(t *testing.T) {
	f := newFixture(t, 4<<10, 1)
	must(t, f.args("--disk-budget", "3MiB", "--overlay-budget", "5MiB", "--memory", "7MiB", "fetch", f.ref)...)
	budgets := func(args ...string) (disk, ov, mem int64) {
		t.Helper()
		for _, r := range decode[[]admin.UsageRecord](t, must(t, f.args(append(args, "du", "--json")...)...)) {
			switch r.Tier {
			case admin.TierDisk:
				disk = r.Budget
			case admin.UsageOverlay:
				ov = r.Budget
			case admin.TierMemory:
				mem = r.Budget
			}
		}
		return
	}
	want := func(what string, gotDisk, gotOv, gotMem, d, o, m int64) {
		t.Helper()
		if gotDisk != d || gotOv != o || gotMem != m {
			t.Errorf("%s: budgets disk %d overlay %d memory %d, want %d %d %d", what, gotDisk, gotOv, gotMem, d, o, m)
		}
	}
	d, o, m := budgets()
	want("du after fetch --disk-budget 3MiB ...", d, o, m, 3<<20, 5<<20, 7<<20)
	must(t, f.args("gc")...)
	d, o, m = budgets()
	want("du after gc without budget flags", d, o, m, 3<<20, 5<<20, 7<<20)
	// Explicit flags win (and gc, which uses the root, records them).
	must(t, f.args("--disk-budget", "2MiB", "gc")...)
	d, o, m = budgets()
	want("du after gc --disk-budget 2MiB", d, o, m, 2<<20, 5<<20, 7<<20)
	// So do config file keys.
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(cfg, []byte("overlay-budget: 9MiB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, o, m = budgets("--config", cfg)
	want("du --config (overlay-budget: 9MiB)", d, o, m, 2<<20, 9<<20, 7<<20)
	// Inspection records nothing.
	d, o, m = budgets()
	want("du after an inspection with other budgets", d, o, m, 2<<20, 5<<20, 7<<20)
}

// du's "root" record counts every byte under the root as du -sb does.
func TestDuCountsEveryByte(t *testing.T) {
	duPath, err := exec.LookPath("du")
	if err != nil {
		t.Skip("no du program")
	}
	f := newFixture(t, 256<<10, 3)
	must(t, f.args("fetch", f.ref)...)
	must(t, f.args("materialize", f.ref, "--format", "overlay")...)
	must(t, f.args("materialize", f.ref, "--format", "ext4", "--out", filepath.Join(t.TempDir(), "img.ext4"))...)
	var root, disk, ov admin.UsageRecord
	for _, r := range decode[[]admin.UsageRecord](t, must(t, f.args("du", "--json")...)) {
		switch r.Tier {
		case admin.UsageRoot:
			root = r
		case admin.TierDisk:
			disk = r
		case admin.UsageOverlay:
			ov = r
		}
	}
	out, err := exec.Command(duPath, "-sb", f.root).Output()
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(out))
	want, err := strconv.ParseInt(fields[0], 10, 64)
	if err != nil {
		t.Fatalf("du -sb: %q", out)
	}
	// The records of the tiers alone miss the index, directories, the
	// extracted layers' metadata and the ext4 image: the total must not.
	if root.Bytes <= disk.Bytes+ov.Bytes {
		t.Fatalf("root %d bytes, no more than disk %d + overlay %d", root.Bytes, disk.Bytes, ov.Bytes)
	}
	// The Badger index is the one part that changes between blobctl's
	// count (index open) and du's (index closed): closing it writes its
	// memtable out and truncates its files. It holds a few dozen rows here,
	// well under 64 KiB of tables and logs either way; everything else
	// must match to the byte.
	const slack = 64 << 10
	if d := root.Bytes - want; d > slack || d < -slack {
		t.Fatalf("du root %d bytes, du -sb %d (diff %d, more than %d)", root.Bytes, want, d, slack)
	}
}

// verify reports a blob whose file vanished while the root was closed,
// and exits 1.
func TestVerifyReportsMissingBlob(t *testing.T) {
	f := newFixture(t, 8<<10, 2)
	must(t, f.args("fetch", f.ref)...)
	digests, _ := f.layers(t)
	hex := strings.TrimPrefix(digests[1], "sha256:")
	if err := os.Remove(filepath.Join(f.root, "blobs", "sha256", hex[:2], hex)); err != nil {
		t.Fatal(err)
	}
	r := blobctl(t, "", f.args("verify")...)
	if r.code != exitCheckFailed || !strings.Contains(r.stdout, digests[1]) || !strings.Contains(r.stdout, admin.StatusMissing) ||
		!strings.Contains(r.stdout, "1 corrupt or missing") {
		t.Fatalf("verify after deleting a blob file: exit %d, want %d\n%s%s", r.code, exitCheckFailed, r.stdout, r.stderr)
	}
}

// evict --image removes the ext4 images derived from the image and reports
// no negative count; an image that is not cached is exit code 3.
func TestEvictImageDerivedAndCounts(t *testing.T) {
	f := newFixture(t, 16<<10, 2)
	// The same image in another repository. (Under another tag of the same
	// repository the two would share their membership refs, which
	// fetcher.InvalidateCache removes for both.)
	registrytest.Push(t, f.reg, "copy:v1", f.img, nil)
	ref2 := f.reg + "/copy:v1"
	must(t, f.args("fetch", f.ref)...)
	must(t, f.args("fetch", ref2)...)
	must(t, f.args("materialize", f.ref, "--format", "ext4", "--out", filepath.Join(t.TempDir(), "a.ext4"))...)
	derived := func() []admin.RefRecord {
		return decode[[]admin.RefRecord](t, must(t, f.args("refs", "--namespace", "derived", "--json")...))
	}
	dv := derived()
	if len(dv) == 0 {
		t.Fatal("no derivation ref after materialize --format ext4")
	}
	check := func(what string, recs []admin.EvictRecord) {
		t.Helper()
		for _, r := range recs {
			if r.Blobs < 0 || r.Bytes < 0 {
				t.Errorf("%s: negative counts %+v", what, recs)
			}
		}
	}
	// The copy still uses every blob: nothing goes but the first one's refs
	// (reading its manifests fills the memory tier meanwhile, which must
	// not count as negative evictions).
	recs := decode[[]admin.EvictRecord](t, must(t, f.args("evict", "--image", f.ref, "--json")...))
	check("evict --image (blobs shared with a copy)", recs)
	for _, r := range recs {
		if r.Blobs != 0 {
			t.Errorf("evict --image removed blobs the copy uses: %+v", recs)
		}
	}
	if len(derived()) != len(dv) {
		t.Errorf("evict --image removed the ext4 image the copy still has")
	}
	recs = decode[[]admin.EvictRecord](t, must(t, f.args("evict", "--image", ref2, "--json")...))
	check("evict --image of the copy", recs)
	var ext4 admin.EvictRecord
	for _, r := range recs {
		if r.Tier == admin.UsageExt4 {
			ext4 = r
		}
	}
	if got := derived(); len(got) != 0 {
		t.Errorf("derivation refs left after evict --image: %+v", got)
	}
	if r := blobctl(t, "", f.args("stat", dv[0].Digest)...); r.code != exitNotFound {
		t.Errorf("derived image blob %s still held after evict --image (stat exit %d)", dv[0].Digest, r.code)
	}
	imgs, _ := filepath.Glob(filepath.Join(f.root, "ext4", "images", "*.ext4"))
	if len(imgs) != 0 {
		t.Errorf("ext4 images left in ext4-dir: %v (evict reported %+v)", imgs, ext4)
	}
	for _, ref := range []string{ref2, f.reg + "/never:fetched"} {
		if r := blobctl(t, "", f.args("evict", "--image", ref)...); r.code != exitNotFound {
			t.Errorf("evict --image %s (not cached): exit %d, want %d\n%s", ref, r.code, exitNotFound, r.stderr)
		}
	}
}
