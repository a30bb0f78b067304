package main

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/strata-oci/strata"
	"github.com/strata-oci/strata/internal/registrytest"
)

// documentedExitCodes reads the exit-code table of docs/operations.md.
func documentedExitCodes(t *testing.T) map[int]string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(doc), "## Exit codes")
	if !ok {
		t.Fatal("docs/operations.md has no Exit codes section")
	}
	table, _, _ = strings.Cut(table, "\n## ")
	codes := map[int]string{}
	for _, m := range regexp.MustCompile(`(?m)^\| (\d+) \| (.*) \|$`).FindAllStringSubmatch(table, -1) {
		n, _ := strconv.Atoi(m[1])
		codes[n] = m[2]
	}
	if len(codes) < 8 {
		t.Fatalf("found %d rows in the exit code table of docs/operations.md", len(codes))
	}
	return codes
}

// writeConfig writes a config file and returns its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "strata.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestExitCodes runs one case or more for every row of the exit code
// table in docs/operations.md, and fails if a documented code has no case.
func TestExitCodes(t *testing.T) {
	f := newFixture(t, 4<<10, 1)
	must(t, f.args("fetch", f.ref)...)
	priv := registrytest.InProcess(t, registrytest.BasicAuthHandler("alice", "pw"))
	registrytest.Push(t, priv, "priv:v1", f.img, basicAuth("alice", "pw"))
	corruptRoot := newFixtureAt(t, f.reg, 4<<10, 1)
	must(t, corruptRoot.args("fetch", corruptRoot.ref)...)
	digests, _ := corruptRoot.layers(t)
	corrupt(t, corruptRoot.root, digests[0])
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	held := filepath.Join(t.TempDir(), "held")
	holdInChild(t, held)

	cases := []struct {
		desc  string
		args  []string
		stdin string
		code  int
	}{
		{"help", []string{"--help"}, "", exitOK},
		{"version", []string{"version"}, "", exitOK},
		{"fetch", f.args("fetch", f.ref), "", exitOK},
		{"verify finds a corrupt blob", corruptRoot.args("verify"), "", exitCheckFailed},
		{"unknown command", []string{"bogus"}, "", exitUsage},
		{"unknown command after flags", f.args("lss"), "", exitUsage},
		{"unknown flag", f.args("ls", "--colour"), "", exitUsage},
		{"bad CIDR", []string{"--root", f.root, "--allow-cidr", "300.0.0.0/8", "ls"}, "", exitUsage},
		{"CIDR without prefix", []string{"--root", f.root, "--allow-cidr", "127.0.0.1", "ls"}, "", exitUsage},
		{"bad remote URL scheme", []string{"--root", f.root, "--remote", "http://127.0.0.1:1", "ls"}, "", exitUsage},
		{"remote without port", []string{"--root", f.root, "--remote", "grpc://127.0.0.1", "ls"}, "", exitUsage},
		{"remote with a path", []string{"--root", f.root, "--remote", "grpc://127.0.0.1:1/instance", "ls"}, "", exitUsage},
		{"config key in upper case", []string{"--config", writeConfig(t, "MEMORY: 1MiB\n"), "--root", f.root, "ls"}, "", exitUsage},
		{"bad digest", f.args("stat", "sha256:xyz"), "", exitUsage},
		{"bad platform", f.args("--platform", "linux//", "fetch", f.ref), "", exitUsage},
		{"missing blob", f.args("stat", "sha256:"+strings.Repeat("ab", 32)), "", exitNotFound},
		{"missing tag", f.args("fetch", f.reg+"/app:nope"), "", exitNotFound},
		{"anonymous pull of a private image", f.args("fetch", priv+"/priv:v1"), "", exitDenied},
		{"wrong password", f.args("--username", "alice", "--password-stdin", "fetch", priv+"/priv:v1"), "nope\n", exitDenied},
		{"registry refuses connections", f.args("fetch", "127.0.0.1:1/app:v1"), "", exitUnavailable},
		{"address denied by the network policy", []string{"--root", filepath.Join(t.TempDir(), "root"), "fetch", f.ref}, "", exitUnavailable},
		{"materialize on a root held by another process", []string{"--root", held, "--allow-cidr", "127.0.0.0/8", "materialize", f.ref, "--format", "overlay"}, "", exitLocked},
		{"root is a file", []string{"--root", notADir, "gc"}, "", exitFailure},
	}
	covered := map[int]bool{}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			r := blobctl(t, tc.stdin, tc.args...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, tc.code, r.stdout, r.stderr)
			}
			if tc.code != exitOK && tc.code != exitCheckFailed && !strings.HasPrefix(r.stderr, "blobctl: ") {
				t.Errorf("stderr %q: want a 'blobctl: ' message", r.stderr)
			}
		})
		covered[tc.code] = true
	}
	// Writing the output fails: TestOutputWriteFailure covers exitFailure
	// too. Signals need the real binary: TestInterruptCleansUp.
	covered[130], covered[143] = true, true
	covered[exitNotCached] = true // needs a full filesystem: TestFullFilesystem
	documented := documentedExitCodes(t)
	for _, code := range sortedKeys(documented) {
		if !covered[code] {
			t.Errorf("exit code %d (%s) is documented but no case tests it", code, documented[code])
		}
	}
	// The help text lists the same codes as the document.
	help := blobctl(t, "", "--help").stdout
	for _, code := range sortedKeys(documented) {
		if !regexp.MustCompile(`(?m)^  ` + strconv.Itoa(code) + `  `).MatchString(help) {
			t.Errorf("--help does not list exit code %d", code)
		}
	}
}

// failingWriter fails every write with err.
type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

// TestOutputWriteFailure: output that cannot be written is a failure,
// in-process (a writer that fails) and for the real binary (/dev/full).
func TestOutputWriteFailure(t *testing.T) {
	f := newFixture(t, 4<<10, 1)
	must(t, f.args("fetch", f.ref)...)
	for _, args := range [][]string{
		{"version"},
		f.args("ls"),
		f.args("du"),
		f.args("ls", "--json"),
		f.args("refs"),
	} {
		var errb bytes.Buffer
		code := run(context.Background(), args, strings.NewReader(""), failingWriter{&fs.PathError{Op: "write", Path: "/dev/stdout", Err: syscall.ENOSPC}}, &errb)
		if code != exitFailure || !strings.Contains(errb.String(), "could not write the output (no space left on the device)") {
			t.Errorf("%v to a full stdout: exit %d, stderr %q; want %d and a message", args, code, errb.String(), exitFailure)
		}
	}

	bin := buildBinary(t)
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	defer full.Close()
	for _, args := range [][]string{{"version"}, {"--help"}, f.args("du")} {
		cmd := exec.Command(bin, args...)
		cmd.Stdout = full
		var errb bytes.Buffer
		cmd.Stderr = &errb
		_ = cmd.Run()
		if code := cmd.ProcessState.ExitCode(); code != exitFailure || !strings.Contains(errb.String(), "no space left") {
			t.Errorf("blobctl %v > /dev/full: exit %d, stderr %q; want %d", args, code, errb.String(), exitFailure)
		}
	}
}

// TestConfigStrict: keys match exactly, values of the wrong type are named
// by key and line without Go types, and the identity key must be a secret.
func TestConfigStrict(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	const shortKey = "short-secret-key-123"
	for _, tc := range []struct {
		desc, body string
		want       []string // in the message
	}{
		{"upper-case key", "memory: 8MiB\nMEMORY: 1MiB\n", []string{`line 2: key "MEMORY": keys are lower case; write "memory"`}},
		{"mixed-case key", "Disk-Budget: 1GiB\n", []string{`line 1: key "Disk-Budget"`, `"disk-budget"`}},
		{"unknown key", "# comment\nmemroy: 8MiB\n", []string{`line 2: unknown key "memroy"`}},
		{"repeated key", "memory: 8MiB\nmemory: 9MiB\n", []string{`"memory" already set`}},
		{"list where a string goes", "platform: [linux/amd64]\n", []string{"line 1: platform: got a list, want a string"}},
		{"string where a list goes", "allow-cidr: 10.0.0.0/8\n", []string{"line 1: allow-cidr: got a string, want a list"}},
		{"mapping where a bool goes", "keychain: {a: b}\n", []string{"line 1: keychain: got a mapping, want true or false"}},
		{"bad size", "memory: lots\n", []string{`line 1: memory: invalid size "lots"`}},
		{"bad CIDR in the file", "allow-cidr: [10.0.0.0/33]\n", []string{`allow-cidr "10.0.0.0/33": not an address range`}},
		{"short identity key", "identity-key: " + shortKey + "\n", []string{"line 1: identity-key: 20 bytes, too short: it must be at least 32"}},
		{"placeholder identity key", "tag-ttl: 1m\nidentity-key: \"REPLACE-WITH-32-RANDOM-BYTES-SHARED-BY-THE-FLEET\"\n", []string{"line 2: identity-key: still the placeholder"}},
		{"identity key not a string", "identity-key: [1, 2]\n", []string{"identity-key: want a string of at least 32"}},
		{"not a mapping", "- memory\n", []string{"want a mapping of keys"}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			cfg := writeConfig(t, tc.body)
			r := blobctl(t, "", "--config", cfg, "--root", root, "du")
			if r.code != exitUsage {
				t.Fatalf("exit %d, want %d; %s", r.code, exitUsage, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr %q lacks %q", r.stderr, w)
				}
			}
			for _, bad := range []string{"Go struct field", "Config.", "json:", "error unmarshaling", shortKey} {
				if strings.Contains(r.stderr, bad) {
					t.Errorf("stderr %q holds %q", r.stderr, bad)
				}
			}
		})
	}
	// What the documentation shows, with real values, loads.
	good := "memory: 8MiB\ndisk-budget: 1GiB\nallow-cidr: [127.0.0.0/8]\nidentity-key: \"" + strings.Repeat("k", 32) + "\"\nmirror:\n  docker.io: [mirror.gcr.io]\n"
	cfg, err := strata.Load(writeConfig(t, good), strata.Default())
	if err != nil {
		t.Fatalf("valid config: %v", err)
	}
	if cfg.MemoryBudget != 8<<20 || cfg.DiskBudget != 1<<30 || len(cfg.AllowCIDRs) != 1 || cfg.IdentityKey.IsZero() || len(cfg.Mirrors["docker.io"]) != 1 {
		t.Fatalf("valid config loaded as %v", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("valid config does not validate: %v", err)
	}
	// JSON works too, with the same exact keys.
	if _, err := strata.Load(writeConfig(t, `{"memory": "8MiB", "Memory": "1MiB"}`), strata.Default()); err == nil || !strings.Contains(err.Error(), `"Memory"`) {
		t.Fatalf("JSON with a key in another case: %v", err)
	}
}

// TestVersion: module version, commit and Go version, from the build.
func TestVersion(t *testing.T) {
	r := blobctl(t, "", "version", "--json")
	if r.code != 0 {
		t.Fatalf("version: exit %d; %s", r.code, r.stderr)
	}
	v := decode[versionInfo](t, r.stdout)
	if v.Go != runtime.Version() || v.Platform != runtime.GOOS+"/"+runtime.GOARCH || v.Version == "" {
		t.Errorf("version %+v", v)
	}
	// A broken config does not stop version.
	if r := blobctl(t, "", "--config", writeConfig(t, "nope: 1\n"), "version"); r.code != 0 || !strings.Contains(r.stdout, runtime.Version()) {
		t.Errorf("version with a bad config: exit %d; %s%s", r.code, r.stdout, r.stderr)
	}

	// A binary built with VCS stamping (the default of go build in a git
	// checkout; this environment may turn it off with GOFLAGS) carries
	// the module path and the commit it was built from.
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("no git commit to compare with: %v", err)
	}
	if top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output(); err == nil {
		if fi, err := os.Lstat(filepath.Join(strings.TrimSpace(string(top)), ".git")); err == nil && !fi.IsDir() {
			t.Skip("a git worktree: go build stamps no VCS information there; not tested: the commit blobctl version reports")
		}
	}
	bin := filepath.Join(t.TempDir(), "blobctl")
	if out, err := exec.Command("go", "build", "-buildvcs=true", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version", "--json").Output()
	if err != nil {
		t.Fatal(err)
	}
	v = decode[versionInfo](t, string(out))
	if v.Module != "github.com/strata-oci/strata" || v.Version == "" || v.Version == "unknown" || v.Go != runtime.Version() {
		t.Errorf("binary version %+v: want the module, its version and the Go version", v)
	}
	if want := strings.TrimSpace(string(head)); v.Commit != want || v.Time == "" {
		t.Fatalf("binary commit %q at %q, want %q", v.Commit, v.Time, want)
	}
	text, err := exec.Command(bin, "version").Output()
	if err != nil || !strings.Contains(string(text), "commit "+v.Commit) || !strings.Contains(string(text), v.Go) {
		t.Errorf("version text %q (%v)", text, err)
	}
}

// internals are words of the implementation that a first error sentence
// must not show.
var internals = []string{"HEAD manifest", "GET ", "access proof", "tier unavailable", "Go struct field", "Config.", ".tmp-", "(HTTP "}

// TestErrorTexts: the first line says what, why and what to do, in the
// user's terms; --verbose adds the detail.
func TestErrorTexts(t *testing.T) {
	f := newFixture(t, 4<<10, 1)
	priv := registrytest.InProcess(t, registrytest.BasicAuthHandler("alice", "pw"))
	registrytest.Push(t, priv, "priv:v1", f.img, basicAuth("alice", "pw"))
	credCfg := writeConfig(t, fmt.Sprintf("credentials:\n  %q: {username: bob, password: wrong-pw-456}\n", priv))
	for _, tc := range []struct {
		desc   string
		args   []string
		stdin  string
		want   []string
		detail string // in the --verbose detail only
	}{
		{"auth required", f.args("fetch", priv+"/priv:v1"), "",
			[]string{priv + "/priv:v1 needs credentials", "refused an anonymous pull", "--username USER --password-stdin"}, "HTTP 401"},
		{"credentials rejected", f.args("--username", "alice", "--password-stdin", "fetch", priv+"/priv:v1"), "wrong-pw-123\n",
			[]string{"rejected the credentials of user \"alice\"", "check the user name and password"}, "HTTP 401"},
		{"configured credentials rejected", f.args("--config", credCfg, "fetch", priv+"/priv:v1"), "",
			[]string{"rejected the credentials configured for it"}, "HTTP 401"},
		{"not found", f.args("fetch", f.reg+"/app:nope"), "",
			[]string{f.reg + "/app:nope was not found", "check the name"}, "HTTP 404"},
		{"network policy", []string{"--root", f.root, "fetch", f.ref}, "",
			[]string{"network policy refused", "127.0.0.1 is in 127.0.0.0/8", "--allow-cidr 127.0.0.0/8"}, "address denied"},
		{"unreachable", f.args("fetch", "127.0.0.1:1/app:v1"), "",
			[]string{"cannot reach the registry 127.0.0.1:1 (connection refused)", "try again later"}, "connection refused"},
		{"config key", []string{"--config", writeConfig(t, "registry: {}\n"), "du"}, "",
			[]string{`line 1: unknown key "registry"`}, ""},
		{"platform all outside fetch", f.args("--platform", "all", "materialize", f.ref, "--format", "overlay"), "",
			[]string{"--platform all is for fetch only"}, ""},
		{"unknown command", []string{"fech"}, "",
			[]string{`unknown command "fech": did you mean fetch?`}, ""},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			r := blobctl(t, tc.stdin, tc.args...)
			if r.code == 0 {
				t.Fatalf("exit 0; %s", r.stdout)
			}
			first, rest, _ := strings.Cut(r.stderr, "\n")
			if rest != "" {
				t.Errorf("more than one line without --verbose: %q", r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(first, w) {
					t.Errorf("%q lacks %q", first, w)
				}
			}
			for _, bad := range internals {
				if strings.Contains(first, bad) {
					t.Errorf("%q shows the internal %q", first, bad)
				}
			}
			for _, secret := range []string{"wrong-pw-123", "wrong-pw-456", "pw\n"} {
				if strings.Contains(r.stderr, secret) {
					t.Errorf("stderr holds a password: %q", r.stderr)
				}
			}
			if tc.detail == "" {
				return
			}
			v := blobctl(t, tc.stdin, append([]string{"--verbose"}, tc.args...)...)
			vfirst, vrest, _ := strings.Cut(v.stderr, "\n")
			if vfirst != first || !strings.HasPrefix(vrest, "  detail: ") || !strings.Contains(vrest, tc.detail) {
				t.Errorf("--verbose: %q; want the same first line, then a detail holding %q", v.stderr, tc.detail)
			}
		})
	}
	// The two denials read differently.
	anon := blobctl(t, "", f.args("fetch", priv+"/priv:v1")...).stderr
	wrong := blobctl(t, "nope\n", f.args("--username", "alice", "--password-stdin", "fetch", priv+"/priv:v1")...).stderr
	if anon == wrong {
		t.Errorf("no credentials and a wrong password read the same: %q", anon)
	}
}

// TestRootlessOverlayError: the overlay materializer's refusal to set
// trusted.overlay.opaque without privilege suggests --overlay-userxattr.
func TestRootlessOverlayError(t *testing.T) {
	// The error exactly as the applier returns it, wrapped as the
	// materializer and blobctl wrap it.
	err := fmt.Errorf("overlay: extract layer sha256:ab: %w", &fs.PathError{Op: "setxattr trusted.overlay.opaque", Path: "/root/overlay/tmp-1/etc", Err: syscall.EPERM})
	a := newApp(strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{})
	msg := a.explain(err)
	if !strings.Contains(msg, "--overlay-userxattr") || strings.Contains(msg, "tmp-1") {
		t.Errorf("explain: %q", msg)
	}
	// Other permission errors are not blamed on the xattr.
	other := &fs.PathError{Op: "mkdir", Path: "/x", Err: syscall.EPERM}
	if msg := a.explain(other); strings.Contains(msg, "overlay-userxattr") {
		t.Errorf("explain(%v) = %q", other, msg)
	}
}

// sortedKeys is for stable messages.
func sortedKeys(m map[int]string) []int {
	var ks []int
	for k := range m {
		ks = append(ks, k)
	}
	sort.Ints(ks)
	return ks
}
