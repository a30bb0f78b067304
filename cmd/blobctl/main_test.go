package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata"
	"github.com/strata-oci/strata/internal/registrytest"
)

// holdEnv makes the test binary, re-executed, open a root and hold it (see
// TestMain) so tests can run blobctl against a root in use.
const holdEnv = "BLOBCTL_TEST_HOLD_ROOT"

func TestMain(m *testing.M) {
	if root := os.Getenv(holdEnv); root != "" {
		os.Exit(holdRoot(root))
	}
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// holdRoot opens the host at root, says "ready" on stdout and holds it until
// stdin closes.
func holdRoot(root string) int {
	cfg := strata.Default()
	cfg.Root = root
	cfg.AllowCIDRs = []string{"127.0.0.0/8"}
	cfg.Metrics = prometheus.NewRegistry()
	h, err := strata.Open(context.Background(), cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hold:", err)
		return 1
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := h.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "hold: close:", err)
		return 1
	}
	return 0
}

// holdInChild starts a child process holding root and returns when it is
// ready; the child is stopped in t.Cleanup (or by calling the returned func).
func holdInChild(t *testing.T, root string) (release func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdEnv+"="+root)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("holder did not start: %q %v; stderr: %s", line, err, stderr.String())
	}
	done := false
	release = func() {
		if done {
			return
		}
		done = true
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("holder: %v; stderr: %s", err, stderr.String())
		}
	}
	t.Cleanup(release)
	return release
}

// result is one blobctl run.
type result struct {
	stdout, stderr string
	code           int
}

// blobctl runs the command in-process with args.
func blobctl(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return result{out.String(), errb.String(), code}
}

// must runs blobctl and fails the test unless it exits 0.
func must(t *testing.T, args ...string) string {
	t.Helper()
	r := blobctl(t, "", args...)
	if r.code != 0 {
		t.Fatalf("blobctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func decode[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("output is not the expected JSON: %v\n%s", err, s)
	}
	return v
}

// fixture is a registry holding one image, and a fresh root.
type fixture struct {
	reg, ref string
	img      v1.Image
	root     string
	flags    []string // --root and --allow-cidr
}

// newFixture pushes an image of layers tar layers, each holding one file of
// layerSize random bytes (gzip barely shrinks them).
func newFixture(t *testing.T, layerSize int64, layers int64) *fixture {
	t.Helper()
	return newFixtureAt(t, registrytest.InProcess(t), layerSize, layers)
}

// newFixtureAt is newFixture on the registry at host.
func newFixtureAt(t *testing.T, reg string, layerSize int64, layers int64) *fixture {
	t.Helper()
	f := &fixture{reg: reg, root: filepath.Join(t.TempDir(), "root")}
	img, err := random.Image(layerSize, layers)
	if err != nil {
		t.Fatal(err)
	}
	f.img = img
	registrytest.Push(t, f.reg, "app:v1", f.img, nil)
	f.ref = f.reg + "/app:v1"
	f.flags = []string{"--root", f.root, "--allow-cidr", "127.0.0.0/8"}
	return f
}

func (f *fixture) args(a ...string) []string { return append(append([]string{}, f.flags...), a...) }

// layers returns the image's layer digests and compressed bytes.
func (f *fixture) layers(t *testing.T) (digests []string, blobs [][]byte) {
	t.Helper()
	ls, err := f.img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, d.String())
		blobs = append(blobs, b)
	}
	return digests, blobs
}
