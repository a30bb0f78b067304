package main

import (
	"bytes"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-oci/strata/internal/registrytest"
)

// TestProgressThroughHeldRoot fetches through the admin socket of another
// process holding the root, with --progress plain: the holder reports its
// reads and blobctl prints the same start and done lines per layer as when
// it holds the root itself, on stderr, with the records on stdout.
func TestProgressThroughHeldRoot(t *testing.T) {
	f := newFixture(t, 64<<10, 2)
	digests, _ := f.layers(t)
	short := func(i int) string { return strings.TrimPrefix(digests[i], "sha256:")[:12] }
	holdInChild(t, f.root)

	for _, pass := range []string{"cold", "warm"} { // from the registry, then from the holder's tiers
		r := blobctl(t, "", f.args("fetch", f.ref, "--progress", "plain")...)
		if r.code != 0 {
			t.Fatalf("%s fetch through the holder: exit %d; %s", pass, r.code, r.stderr)
		}
		if !strings.HasPrefix(r.stderr, "resolving "+f.ref+" through the process holding the root\n") {
			t.Errorf("%s: stderr does not start with the resolving step: %q", pass, r.stderr)
		}
		for i := range digests {
			if strings.Count(r.stderr, "download "+short(i)+" ") != 2 || strings.Count(r.stderr, "download "+short(i)+" done: ") != 1 {
				t.Errorf("%s: want a start and a done line for %s in %q", pass, short(i), r.stderr)
			}
			if !strings.Contains(r.stdout, "layer     "+digests[i]) {
				t.Errorf("%s: no record of layer %s on stdout: %q", pass, digests[i], r.stdout)
			}
		}
		if strings.Contains(r.stdout, "download ") {
			t.Errorf("%s: progress on stdout: %q", pass, r.stdout)
		}
	}

	// No progress asked for: none shown, and --json stays one document.
	r := blobctl(t, "", f.args("fetch", f.ref, "--json")...)
	if r.code != 0 || r.stderr != "" {
		t.Errorf("--json through the holder in a pipe: exit %d, stderr %q", r.code, r.stderr)
	}
	if res := decode[fetchResult](t, r.stdout); len(res.Blobs) != 2+len(digests) {
		t.Errorf("--json through the holder: %+v", res)
	}
}

// TestProgressBarsThroughHeldRoot runs blobctl with stderr on a
// pseudo-terminal against a root another process holds: the bar of the
// layer the holder is downloading is drawn while the holder is still
// reading it (the registry holds the layer half-sent until the bar shows).
func TestProgressBarsThroughHeldRoot(t *testing.T) {
	var digest atomic.Value
	release := make(chan struct{})
	reg := registrytest.InProcess(t, gateLayer(&digest, release))
	f := newFixtureAt(t, reg, 512<<10, 1)
	digests, _ := f.layers(t)
	short := strings.TrimPrefix(digests[0], "sha256:")[:12]
	bin := buildBinary(t)
	root := filepath.Join(t.TempDir(), "root")
	holdInChild(t, root)

	master, slave := openPTY(t)
	var term syncBuf
	copied := make(chan struct{})
	go func() { _, _ = io.Copy(&term, master); close(copied) }()
	digest.Store(digests[0])
	cmd := exec.Command(bin, "--root", root, "fetch", f.ref)
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, slave
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	deadline := time.Now().Add(time.Minute) // a bound against a hang, not a speed check
	for !strings.Contains(term.String(), "download "+short) {
		if time.Now().After(deadline) {
			t.Fatalf("no bar of the holder's download on the terminal; it shows %q", term.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	release <- struct{}{}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%v; terminal: %q", err, term.String())
	}
	slave.Close()
	<-copied
	if !strings.Contains(term.String(), "KiB") {
		t.Errorf("the bar shows no byte counts: %q", term.String())
	}
	if strings.Contains(stdout.String(), "\x1b") || !strings.Contains(stdout.String(), "layer     "+digests[0]) || !strings.Contains(stdout.String(), "fetched "+f.ref) {
		t.Errorf("stdout %q: want the plain records without terminal escapes", stdout.String())
	}
}
