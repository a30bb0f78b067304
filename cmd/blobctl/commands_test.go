package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-oci/strata"
	"github.com/strata-oci/strata/internal/admin"
)

func TestFetchReportsSources(t *testing.T) {
	f := newFixture(t, 64<<10, 3)
	res := decode[fetchResult](t, must(t, f.args("fetch", f.ref, "--json")...))
	digests, blobs := f.layers(t)
	if len(res.Blobs) != 2+len(digests) {
		t.Fatalf("%d blob records, want manifest, config and %d layers: %+v", len(res.Blobs), len(digests), res.Blobs)
	}
	var total int64
	for i, b := range res.Blobs {
		if b.Source != "registry" {
			t.Errorf("cold fetch: %s %s from %q, want registry", b.Kind, b.Digest, b.Source)
		}
		if i >= 2 && (b.Kind != "layer" || b.Digest != digests[i-2] || b.Bytes != int64(len(blobs[i-2]))) {
			t.Errorf("record %d = %+v, want layer %s of %d bytes", i, b, digests[i-2], len(blobs[i-2]))
		}
		total += b.Bytes
	}
	if res.Bytes != total || res.Digest == "" || res.Reference != f.ref {
		t.Errorf("summary %+v", res)
	}
	// A new process has an empty memory tier: everything comes from disk.
	res = decode[fetchResult](t, must(t, f.args("fetch", f.ref, "--json")...))
	for _, b := range res.Blobs {
		if b.Source != admin.TierDisk {
			t.Errorf("warm fetch: %s %s from %q, want disk", b.Kind, b.Digest, b.Source)
		}
	}
	if !res.FromCache {
		t.Error("warm fetch within the TTLs made a registry request")
	}
	// Plain output names each blob with its source.
	out := must(t, f.args("fetch", f.ref)...)
	for _, d := range digests {
		if !strings.Contains(out, d) {
			t.Errorf("plain output lacks layer %s:\n%s", d, out)
		}
	}
	if !strings.Contains(out, "fetched "+f.ref) || strings.Contains(out, "\x1b[") {
		t.Errorf("plain output (not a terminal) should have no progress bars:\n%s", out)
	}
}

func TestLsStatCatDuRefs(t *testing.T) {
	f := newFixture(t, 32<<10, 2)
	fetched := decode[fetchResult](t, must(t, f.args("fetch", f.ref, "--json")...))
	digests, blobs := f.layers(t)

	ls := decode[struct {
		Blobs []admin.BlobRecord `json:"blobs"`
		Refs  []admin.RefRecord  `json:"refs"`
	}](t, must(t, f.args("ls", "--json")...))
	onDisk := map[string]admin.BlobRecord{}
	for _, b := range ls.Blobs {
		if b.Tier == admin.TierDisk {
			onDisk[b.Digest] = b
		}
	}
	if len(onDisk) != 4 {
		t.Fatalf("disk lists %d blobs, want 4 (manifest, config, 2 layers): %+v", len(onDisk), ls.Blobs)
	}
	for i, d := range digests {
		b := onDisk[d]
		if b.Size != int64(len(blobs[i])) || b.LastAccess.IsZero() || !strings.Contains(b.MediaType, "tar") {
			t.Errorf("layer %s listed as %+v", d, b)
		}
	}
	if b := onDisk[fetched.Digest]; !strings.Contains(b.MediaType, "manifest") {
		t.Errorf("manifest listed as %+v", b)
	}
	namespaces := map[string]int{}
	for _, r := range ls.Refs {
		namespaces[r.Namespace]++
	}
	// One membership per blob the registry served for the repository
	// (manifest, config, layers): see the fetcher's package doc.
	if namespaces["tag"] != 1 || namespaces["proof"] != 1 || namespaces["member"] != len(fetched.Blobs) {
		t.Errorf("refs by namespace %v, want a tag, a proof and %d memberships", namespaces, len(fetched.Blobs))
	}

	st := decode[[]admin.BlobRecord](t, must(t, f.args("stat", digests[0], "--json")...))
	if len(st) != 1 || st[0].Tier != admin.TierDisk || st[0].Size != int64(len(blobs[0])) {
		t.Errorf("stat: %+v", st)
	}
	if out := must(t, f.args("stat", digests[0])...); !strings.Contains(out, digests[0]) || !strings.HasPrefix(out, "TIER") {
		t.Errorf("stat text: %s", out)
	}

	if out := must(t, f.args("cat", digests[1])...); out != string(blobs[1]) {
		t.Errorf("cat returned %d bytes that differ from the layer's %d", len(out), len(blobs[1]))
	}

	du := decode[[]admin.UsageRecord](t, must(t, f.args("du", "--json")...))
	if len(du) != 5 || du[0].Tier != "memory" || du[1].Tier != "disk" || du[2].Tier != "overlay" || du[3].Tier != admin.UsageExt4 || du[4].Tier != admin.UsageRoot {
		t.Fatalf("du tiers: %+v", du)
	}
	var want int64
	for _, b := range onDisk {
		want += b.Size
	}
	if du[1].Blobs != 4 || du[1].Bytes != want || du[1].Budget != int64(strata.Default().DiskBudget) || du[1].Refs != int64(len(ls.Refs)) {
		t.Errorf("du disk: %+v, want 4 blobs, %d bytes, %d refs", du[1], want, len(ls.Refs))
	}

	tags := decode[[]admin.RefRecord](t, must(t, f.args("refs", "--namespace", "tag", "--json")...))
	if len(tags) != 1 || tags[0].Name != f.ref || tags[0].Expires.IsZero() {
		t.Errorf("tag refs: %+v", tags)
	}
	if out := must(t, f.args("refs")...); !strings.Contains(out, f.ref) || !strings.Contains(out, "proof") {
		t.Errorf("refs text:\n%s", out)
	}
}

// corrupt flips one byte of the blob file of digest under root.
func corrupt(t *testing.T, root, digest string) {
	t.Helper()
	hex := strings.TrimPrefix(digest, "sha256:")
	path := filepath.Join(root, "blobs", "sha256", hex[:2], hex)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyFindsCorruptBlob(t *testing.T) {
	f := newFixture(t, 48<<10, 2)
	must(t, f.args("fetch", f.ref)...)
	digests, _ := f.layers(t)
	if out := must(t, f.args("verify")...); !strings.Contains(out, "verified 4 blobs: 4 ok, 0 corrupt") {
		t.Fatalf("clean verify: %s", out)
	}
	corrupt(t, f.root, digests[1])

	r := blobctl(t, "", f.args("verify", "--json")...)
	if r.code != exitCheckFailed {
		t.Fatalf("verify of a corrupt root: exit %d, want %d; %s", r.code, exitCheckFailed, r.stderr)
	}
	recs := decode[[]admin.VerifyRecord](t, r.stdout)
	bad := 0
	for _, rec := range recs {
		if rec.Status != admin.StatusOK {
			bad++
			if rec.Digest != digests[1] || rec.Status != admin.StatusCorrupt || rec.Removed {
				t.Errorf("bad record %+v, want %s corrupt, not removed", rec, digests[1])
			}
		}
	}
	if len(recs) != 4 || bad != 1 {
		t.Fatalf("verify records %+v, want 4 with 1 corrupt", recs)
	}
	// cat of the corrupt blob fails with exit 1 (detected at EOF).
	if r := blobctl(t, "", f.args("cat", digests[1])...); r.code != exitCheckFailed {
		t.Errorf("cat of a corrupt blob: exit %d, want %d; %s", r.code, exitCheckFailed, r.stderr)
	}
	// The failed read dropped the entry, as verify --remove would have.
	corrupt(t, f.root, digests[0])
	r = blobctl(t, "", f.args("verify", "--remove")...)
	if r.code != exitCheckFailed || !strings.Contains(r.stdout, digests[0]) || !strings.Contains(r.stdout, "removed") {
		t.Fatalf("verify --remove: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := blobctl(t, "", f.args("verify")...); r.code != 0 {
		t.Fatalf("verify after --remove: exit %d\n%s", r.code, r.stdout)
	}
	// The next fetch reads the removed layers from the registry again.
	res := decode[fetchResult](t, must(t, f.args("fetch", f.ref, "--json")...))
	from := map[string]string{}
	for _, b := range res.Blobs {
		from[b.Digest] = b.Source
	}
	if from[digests[0]] != "registry" || from[digests[1]] != "registry" {
		t.Errorf("refetch sources %v, want the removed layers from the registry", from)
	}
}

func TestEvict(t *testing.T) {
	f := newFixture(t, 100<<10, 4)
	must(t, f.args("fetch", f.ref)...)
	digests, blobs := f.layers(t)
	du := decode[[]admin.UsageRecord](t, must(t, f.args("du", "--json")...))
	before := du[1].Bytes

	// --to-size reaches its target.
	target := before / 2
	recs := decode[[]admin.EvictRecord](t, must(t, f.args("evict", "--to-size", strata.Size(target).String(), "--tier", "disk", "--json")...))
	du = decode[[]admin.UsageRecord](t, must(t, f.args("du", "--json")...))
	if du[1].Bytes > target || len(recs) != 1 || recs[0].Tier != "disk" || recs[0].Bytes != before-du[1].Bytes || recs[0].Blobs == 0 {
		t.Fatalf("evict --to-size %d: %+v; disk now %d bytes (was %d)", target, recs, du[1].Bytes, before)
	}

	// One digest: gone from every tier, then a miss (exit 3).
	must(t, f.args("fetch", f.ref)...)
	recs = decode[[]admin.EvictRecord](t, must(t, f.args("evict", digests[2], "--json")...))
	if len(recs) != 1 || recs[0].Bytes != int64(len(blobs[2])) {
		t.Fatalf("evict digest: %+v", recs)
	}
	if r := blobctl(t, "", f.args("stat", digests[2])...); r.code != exitNotFound {
		t.Fatalf("stat after evict: exit %d, want %d", r.code, exitNotFound)
	}
	if r := blobctl(t, "", f.args("evict", digests[2])...); r.code != exitNotFound {
		t.Fatalf("evict of an absent blob: exit %d, want %d", r.code, exitNotFound)
	}

	// --older-than with nothing that old evicts nothing.
	recs = decode[[]admin.EvictRecord](t, must(t, f.args("evict", "--older-than", "1h", "--json")...))
	for _, r := range recs {
		if r.Blobs != 0 {
			t.Fatalf("evict --older-than 1h of fresh blobs: %+v", recs)
		}
	}

	// --older-than a nanosecond: every blob on disk is older than that.
	du = decode[[]admin.UsageRecord](t, must(t, f.args("du", "--json")...))
	recs = decode[[]admin.EvictRecord](t, must(t, f.args("evict", "--older-than", "1ns", "--tier", "disk", "--json")...))
	if len(recs) != 1 || int64(recs[0].Blobs) != du[1].Blobs || recs[0].Bytes != du[1].Bytes {
		t.Fatalf("evict --older-than 1ns: %+v, want all of %+v", recs, du[1])
	}
	must(t, f.args("fetch", f.ref)...)

	// --image forgets the image: its refs and blobs.
	must(t, f.args("evict", "--image", f.ref)...)
	ls := decode[struct {
		Blobs []admin.BlobRecord `json:"blobs"`
		Refs  []admin.RefRecord  `json:"refs"`
	}](t, must(t, f.args("ls", "--json")...))
	if len(ls.Blobs) != 0 || len(ls.Refs) != 0 {
		t.Fatalf("after evict --image: %+v", ls)
	}

	for _, tc := range []struct {
		desc string
		args []string
	}{
		{"no selector", []string{"evict"}},
		{"two selectors", []string{"evict", digests[0], "--to-size", "0"}},
		{"bad digest", []string{"evict", "sha256:nothex"}},
		{"unknown tier", []string{"evict", "--to-size", "0", "--tier", "tape"}},
		{"bad size", []string{"evict", "--to-size", "lots"}},
	} {
		if r := blobctl(t, "", f.args(tc.args...)...); r.code != exitUsage {
			t.Errorf("%s: exit %d, want %d (%s)", tc.desc, r.code, exitUsage, r.stderr)
		}
	}
}

func TestMaterializeAndGC(t *testing.T) {
	f := newFixture(t, 16<<10, 3)
	out := filepath.Join(t.TempDir(), "img.ext4")
	r1 := decode[ext4Result](t, must(t, f.args("materialize", f.ref, "--format", "ext4", "--out", out, "--json")...))
	fi, err := os.Stat(out)
	if err != nil || fi.Size() != r1.Size || r1.FromCache {
		t.Fatalf("ext4: %+v, %v, %v", r1, fi, err)
	}
	img, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(img) < 2048 || img[1080] != 0x53 || img[1081] != 0xef {
		t.Fatal("output is not an ext4 filesystem (no superblock magic)")
	}
	// --keep leaves the image in ext4-dir too, for gc below.
	r2 := decode[ext4Result](t, must(t, f.args("materialize", f.ref, "--format", "ext4", "--out", out, "--keep", "--json")...))
	if !r2.FromCache || r2.Ext4 != r1.Ext4 {
		t.Fatalf("second ext4: %+v, want from cache with digest %s", r2, r1.Ext4)
	}
	derived := decode[[]admin.RefRecord](t, must(t, f.args("refs", "--namespace", "derived", "--json")...))
	if len(derived) != 1 || derived[0].Digest != r1.Ext4 {
		t.Fatalf("derived refs %+v, want one to %s", derived, r1.Ext4)
	}

	ov := decode[overlayResult](t, must(t, f.args("materialize", f.ref, "--format", "overlay", "--json")...))
	if len(ov.LowerDirs) != 3 {
		t.Fatalf("lower dirs %v, want 3", ov.LowerDirs)
	}
	digests, _ := f.layers(t)
	for i, d := range ov.LowerDirs {
		// Mount order: topmost layer first.
		if filepath.Base(d) != strings.TrimPrefix(digests[len(digests)-1-i], "sha256:") {
			t.Errorf("lower dir %d = %s, want layer %s", i, d, digests[len(digests)-1-i])
		}
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
			t.Errorf("lower dir %s: %v", d, err)
		}
	}
	text := must(t, f.args("materialize", f.ref, "--format", "overlay")...)
	if text != strings.Join(ov.LowerDirs, "\n")+"\n" {
		t.Errorf("text output %q, want the lower dirs one per line", text)
	}
	du := decode[[]admin.UsageRecord](t, must(t, f.args("du", "--json")...))
	if du[2].Tier != "overlay" || du[2].Blobs != 3 {
		t.Fatalf("du overlay: %+v", du[2])
	}

	// gc: nothing leases the layers now, and removing the ext4 blob makes its
	// derivation ref an orphan.
	must(t, f.args("evict", r1.Ext4)...)
	gc := decode[admin.GCResult](t, must(t, f.args("gc", "--json")...))
	if gc.Layers != 3 || gc.LayerBytes == 0 || gc.OrphanRefs != 1 || gc.Ext4Images != 1 || gc.Ext4Bytes == 0 {
		t.Fatalf("gc: %+v, want 3 layers, 1 orphan ref and 1 ext4 image removed", gc)
	}
	if derived := decode[[]admin.RefRecord](t, must(t, f.args("refs", "--namespace", "derived", "--json")...)); len(derived) != 0 {
		t.Fatalf("derived refs after gc: %+v", derived)
	}
	for _, d := range ov.LowerDirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("layer dir %s survived gc: %v", d, err)
		}
	}

	for _, tc := range []struct {
		desc string
		args []string
	}{
		{"no format", []string{"materialize", f.ref}},
		{"unknown format", []string{"materialize", f.ref, "--format", "qcow2"}},
		{"ext4 without out", []string{"materialize", f.ref, "--format", "ext4"}},
		{"overlay with out", []string{"materialize", f.ref, "--format", "overlay", "--out", out}},
	} {
		if r := blobctl(t, "", f.args(tc.args...)...); r.code != exitUsage {
			t.Errorf("%s: exit %d, want %d (%s)", tc.desc, r.code, exitUsage, r.stderr)
		}
	}
}

func TestConfigFileAndFlags(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	cfg := filepath.Join(dir, "strata.yaml")
	if err := os.WriteFile(cfg, []byte("root: "+root+"\nmemory: 8MiB\ndisk-budget: 5MiB\noverlay-budget: 1GiB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	must(t, "--config", cfg, "gc") // makes the root (du, an inspection, never does)
	du := decode[[]admin.UsageRecord](t, must(t, "--config", cfg, "du", "--json"))
	if du[0].Budget != 8<<20 || du[1].Budget != 5<<20 || du[2].Budget != 1<<30 {
		t.Fatalf("budgets from the file: %+v", du)
	}
	if _, err := os.Stat(filepath.Join(root, "LOCK")); err != nil {
		t.Fatalf("root from the file not used: %v", err)
	}
	// A flag overrides the file.
	du = decode[[]admin.UsageRecord](t, must(t, "--config", cfg, "--disk-budget", "7MiB", "du", "--json"))
	if du[0].Budget != 8<<20 || du[1].Budget != 7<<20 {
		t.Fatalf("flag over file: %+v", du)
	}
	// Defaults with neither: the XDG cache directory.
	t.Setenv("XDG_CACHE_HOME", filepath.Join(dir, "xdg"))
	must(t, "gc")
	du = decode[[]admin.UsageRecord](t, must(t, "du", "--json"))
	if du[0].Budget != int64(strata.Default().MemoryBudget) || du[1].Budget != int64(strata.Default().DiskBudget) {
		t.Fatalf("defaults: %+v", du)
	}
	if _, err := os.Stat(filepath.Join(dir, "xdg", "strata", "LOCK")); err != nil {
		t.Fatalf("default root not under XDG_CACHE_HOME: %v", err)
	}

	if err := os.WriteFile(cfg, []byte("memroy: 8MiB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		desc string
		args []string
	}{
		{"unknown config key", []string{"--config", cfg, "du"}},
		{"missing config file", []string{"--config", filepath.Join(dir, "nope.yaml"), "du"}},
		{"bad size flag", []string{"--memory", "much", "du"}},
		{"unknown flag", []string{"du", "--colour"}},
		{"password without user", []string{"--password-stdin", "du"}},
		{"extra argument", []string{"du", "now"}},
		{"bad platform", []string{"--root", root, "--platform", "linux//", "du"}},
	} {
		if r := blobctl(t, "", tc.args...); r.code != exitUsage {
			t.Errorf("%s: exit %d, want %d (%s)", tc.desc, r.code, exitUsage, r.stderr)
		}
	}
}

func TestFetchErrors(t *testing.T) {
	f := newFixture(t, 1<<10, 1)
	for _, tc := range []struct {
		desc  string
		args  []string
		stdin string
		code  int
	}{
		{"missing repository", f.args("fetch", f.reg+"/nope:v1"), "", exitNotFound},
		{"missing tag", f.args("fetch", f.reg+"/app:v2"), "", exitNotFound},
		{"loopback not allowed", []string{"--root", f.root, "fetch", f.ref}, "", exitUnavailable},
		{"malformed reference", f.args("fetch", "UPPER/case::x"), "", exitUsage},
		{"username without password", f.args("--username", "u", "fetch", f.ref), "", exitUsage},
		{"empty password", f.args("--username", "u", "--password-stdin", "fetch", f.ref), "", exitUsage},
		{"stat bad digest", f.args("stat", "sha256:xyz"), "", exitUsage},
		{"stat unknown digest", f.args("stat", "sha256:"+strings.Repeat("ab", 32)), "", exitNotFound},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			r := blobctl(t, tc.stdin, tc.args...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d\nstderr: %s", r.code, tc.code, r.stderr)
			}
			if !strings.HasPrefix(r.stderr, "blobctl: ") {
				t.Errorf("stderr %q, want a 'blobctl: ' error", r.stderr)
			}
		})
	}
}

func TestHelpHasExamples(t *testing.T) {
	app := newApp(strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{})
	root := app.rootCommand()
	for _, c := range root.Commands() {
		if c.Name() == "help" || c.Name() == "completion" {
			continue
		}
		if c.Example == "" || c.Short == "" || c.Long == "" {
			t.Errorf("%s: help lacks a short, long or example text", c.Name())
		}
		for _, line := range strings.Split(c.Example, "\n") {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") && !strings.Contains(line, "blobctl ") {
				t.Errorf("%s: example line %q does not run blobctl", c.Name(), line)
			}
		}
	}
	r := blobctl(t, "", "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "Exit codes:") || !strings.Contains(r.stdout, "--allow-cidr") {
		t.Errorf("--help: exit %d\n%s", r.code, r.stdout)
	}
}
