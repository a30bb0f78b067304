package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/strata-oci/strata"
	"github.com/strata-oci/strata/internal/admin"
	"github.com/strata-oci/strata/internal/registrytest"
)

// stripAccess zeroes last-access times, which reading manifests for their
// media types refreshes, so two listings can be compared.
func stripAccess(t *testing.T, s string) string {
	t.Helper()
	var ls struct {
		Blobs []admin.BlobRecord `json:"blobs"`
		Refs  []admin.RefRecord  `json:"refs"`
	}
	if err := json.Unmarshal([]byte(s), &ls); err != nil {
		t.Fatalf("%v\n%s", err, s)
	}
	for i := range ls.Blobs {
		ls.Blobs[i].LastAccess = time.Time{}
	}
	b, _ := json.Marshal(ls)
	return string(b)
}

func TestRootHeldByAnotherProcess(t *testing.T) {
	f := newFixture(t, 64<<10, 3)
	must(t, f.args("fetch", f.ref)...)
	digests, blobs := f.layers(t)

	// Direct: nothing holds the root.
	directLs := must(t, f.args("ls", "--json")...)
	directRefs := must(t, f.args("refs")...)
	directDu := must(t, f.args("du")...)
	directStat := must(t, f.args("stat", digests[0], "--json")...)

	release := holdInChild(t, f.root)
	if _, err := os.Stat(filepath.Join(f.root, admin.SocketName)); err != nil {
		t.Fatalf("holder serves no admin socket: %v", err)
	}
	// Through the admin socket: the same output.
	if got := must(t, f.args("ls", "--json")...); stripAccess(t, got) != stripAccess(t, directLs) {
		t.Errorf("ls through the admin socket differs:\n%s\ndirect:\n%s", got, directLs)
	}
	if got := must(t, f.args("refs")...); got != directRefs {
		t.Errorf("refs differ:\n%s\ndirect:\n%s", got, directRefs)
	}
	if got := must(t, f.args("du")...); got != directDu {
		t.Errorf("du differs:\n%s\ndirect:\n%s", got, directDu)
	}
	if got := must(t, f.args("stat", digests[0], "--json")...); got != directStat {
		t.Errorf("stat differs:\n%s\ndirect:\n%s", got, directStat)
	}
	if got := must(t, f.args("cat", digests[2])...); got != string(blobs[2]) {
		t.Error("cat through the admin socket returned other bytes")
	}
	if r := blobctl(t, "", f.args("stat", "sha256:"+strings.Repeat("cd", 32))...); r.code != exitNotFound {
		t.Errorf("remote stat of a missing blob: exit %d, want %d", r.code, exitNotFound)
	}
	if out := must(t, f.args("metrics")...); !strings.Contains(out, "strata_tier_requests_total") {
		t.Errorf("metrics through the admin socket:\n%s", out)
	}
	// 5 on disk, plus the layer cat read into the holder's memory tier.
	if out := must(t, f.args("verify")...); !strings.Contains(out, "verified 6 blobs: 6 ok, 0 corrupt") {
		t.Errorf("verify through the admin socket: %s", out)
	}
	// fetch goes through the holder: the same records, from its tiers (the
	// layer cat read sits in its memory tier now).
	res := decode[fetchResult](t, must(t, f.args("fetch", f.ref, "--json")...))
	if len(res.Blobs) != 2+len(digests) || !res.FromCache {
		t.Fatalf("fetch through the admin socket: %+v", res)
	}
	for _, b := range res.Blobs {
		want := admin.TierDisk
		if b.Digest == digests[2] {
			want = admin.TierMemory
		}
		if b.Source != want {
			t.Errorf("fetch through the holder: %s from %q, want %s", b.Digest, b.Source, want)
		}
	}
	if out := must(t, f.args("fetch", f.ref)...); !strings.Contains(out, "layer     "+digests[0]) || !strings.Contains(out, "fetched "+f.ref) {
		t.Errorf("plain fetch through the holder:\n%s", out)
	}
	// materialize needs the root itself.
	if r := blobctl(t, "", f.args("materialize", f.ref, "--format", "overlay")...); r.code != exitLocked || !strings.Contains(r.stderr, "locked") {
		t.Errorf("materialize on a held root: exit %d, want %d; %s", r.code, exitLocked, r.stderr)
	}

	// evict through the holder reaches its target, and the holder's state
	// is what a direct open sees afterwards.
	recs := decode[[]admin.EvictRecord](t, must(t, f.args("evict", "--to-size", "0", "--tier", "disk", "--json")...))
	if len(recs) != 1 || recs[0].Blobs != 5 {
		t.Fatalf("evict through the admin socket: %+v, want 5 blobs", recs)
	}
	du := decode[[]admin.UsageRecord](t, must(t, f.args("du", "--json")...))
	if du[1].Blobs != 0 || du[1].Bytes != 0 {
		t.Fatalf("du after evict: %+v", du[1])
	}
	release()
	if _, err := os.Stat(filepath.Join(f.root, admin.SocketName)); !os.IsNotExist(err) {
		t.Fatalf("socket left after the holder closed: %v", err)
	}
	ls := decode[struct {
		Blobs []admin.BlobRecord `json:"blobs"`
	}](t, must(t, f.args("ls", "--json")...))
	if len(ls.Blobs) != 0 {
		t.Fatalf("direct ls after remote evict: %+v", ls.Blobs)
	}
}

func TestRootHeldWithoutAdmin(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	cfg := strata.Default()
	cfg.Root = root
	cfg.NoAdmin = true
	h, err := strata.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	r := blobctl(t, "", "--root", root, "ls")
	if r.code != exitLocked || !strings.Contains(r.stderr, "admin socket") {
		t.Fatalf("ls on a root held without admin: exit %d, want %d; %s", r.code, exitLocked, r.stderr)
	}
}

// TestBasicAuthDistribution runs fetch against the real registry with
// htpasswd auth: credentials from stdin work, a wrong password is exit 4,
// and no password ever reaches the output.
func TestBasicAuthDistribution(t *testing.T) {
	const user, pass = "alice", "correct-horse-battery"
	reg := registrytest.StartDistribution(t, registrytest.DistributionOptions{BasicUsers: map[string]string{user: pass}})
	f := newFixture(t, 8<<10, 2)
	// Push the fixture's image to the real registry instead.
	registrytest.Push(t, reg.Host, "private/app:v1", f.img, basicAuth(user, pass))
	ref := reg.Host + "/private/app:v1"

	r := blobctl(t, pass+"\n", f.args("--username", user, "--password-stdin", "fetch", ref, "--json")...)
	if r.code != 0 {
		t.Fatalf("fetch with credentials: exit %d; %s", r.code, r.stderr)
	}
	res := decode[fetchResult](t, r.stdout)
	if len(res.Blobs) != 4 {
		t.Fatalf("fetched %+v", res)
	}
	for _, tc := range []struct {
		desc  string
		args  []string
		stdin string
	}{
		{"wrong password", f.args("--username", user, "--password-stdin", "fetch", ref), "wrong-password-123\n"},
		{"anonymous, even with the image cached", f.args("fetch", ref), ""},
	} {
		r := blobctl(t, tc.stdin, tc.args...)
		if r.code != exitDenied {
			t.Errorf("%s: exit %d, want %d; %s", tc.desc, r.code, exitDenied, r.stderr)
		}
		if strings.Contains(r.stdout+r.stderr, "wrong-password-123") || strings.Contains(r.stdout+r.stderr, pass) {
			t.Errorf("%s: a password reached the output", tc.desc)
		}
	}
	// Through the admin socket of a process holding the root: the
	// credential travels to the holder, a wrong one is refused there.
	release := holdInChild(t, f.root)
	if r := blobctl(t, pass+"\n", f.args("--username", user, "--password-stdin", "fetch", ref, "--json")...); r.code != 0 {
		t.Fatalf("fetch with credentials through the holder: exit %d; %s", r.code, r.stderr)
	}
	r = blobctl(t, "wrong-password-123\n", f.args("--username", user, "--password-stdin", "fetch", ref)...)
	if r.code != exitDenied || strings.Contains(r.stdout+r.stderr, "wrong-password-123") {
		t.Fatalf("wrong password through the holder: exit %d, want %d; %s", r.code, exitDenied, r.stderr)
	}
	release()

	// The real binary, built and run as a user would.
	bin := buildBinary(t)
	cmd := exec.Command(bin, f.args("--username", user, "--password-stdin", "fetch", ref, "--json")...)
	cmd.Stdin = strings.NewReader(pass + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("binary fetch: %v", err)
	}
	if res := decode[fetchResult](t, string(out)); !res.FromCache || len(res.Blobs) != 4 {
		t.Fatalf("binary fetch: %+v", res)
	}
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// buildBinary builds blobctl once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "blobctl-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "blobctl")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

func TestBinaryExitCodes(t *testing.T) {
	bin := buildBinary(t)
	f := newFixture(t, 4<<10, 1)
	for _, tc := range []struct {
		desc string
		args []string
		code int
	}{
		{"help", []string{"--help"}, 0},
		{"fetch", f.args("fetch", f.ref), 0},
		{"verify clean", f.args("verify"), 0},
		{"usage", f.args("stat"), exitUsage},
		{"not found", f.args("stat", "sha256:"+strings.Repeat("0", 64)), exitNotFound},
	} {
		cmd := exec.Command(bin, tc.args...)
		out, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != tc.code {
			t.Errorf("%s: exit %d, want %d\n%s", tc.desc, code, tc.code, out)
		}
	}
}

func basicAuth(user, pass string) authn.Authenticator {
	return &authn.Basic{Username: user, Password: pass}
}
