package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestHelpExamplesRun runs every example of every command's --help against a
// local registry, with the documented image and digest replaced by the
// fixture's. Examples that need a terminal password, root or a long-running
// server are skipped by rule (listed below), not silently.
func TestHelpExamplesRun(t *testing.T) {
	f := newFixture(t, 16<<10, 2)
	digests, _ := f.layers(t)
	t.Chdir(t.TempDir()) // examples write relative files (alpine.ext4)
	subst := strings.NewReplacer(
		"docker.io/library/alpine:3.20", f.ref,
		"127.0.0.1:5055/strata/sample:latest", f.ref,
		"sha256:4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1", digests[0],
		"--root /var/cache/strata", "",
	)
	app := newApp(strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{})
	root := app.rootCommand()
	var lines []string
	for _, c := range append(root.Commands(), root) {
		for _, l := range strings.Split(c.Example, "\n") {
			l = strings.TrimSpace(l)
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			lines = append(lines, l)
		}
	}
	// fetch first, evict last: the examples assume an image that is there.
	rank := func(l string) int {
		switch {
		case strings.Contains(l, " fetch "):
			return 0
		case strings.Contains(l, " evict"):
			return 2
		}
		return 1
	}
	sort.SliceStable(lines, func(i, j int) bool { return rank(lines[i]) < rank(lines[j]) })
	// materialize --mount and unmount (in that order: commands are sorted)
	// share one directory; whatever stays mounted is unmounted at the end.
	mnt := filepath.Join(t.TempDir(), "mnt")
	t.Cleanup(func() { _ = unmount(mnt) })
	ran := 0
	for _, l := range lines {
		switch {
		case strings.Contains(l, "$"):
			t.Logf("skipped (needs a secret on stdin): %s", l)
			continue
		case strings.HasPrefix(l, "sudo ") && os.Geteuid() != 0:
			if os.Getenv("CI") == "true" {
				t.Errorf("example needs root and CI runs as root: %s", l)
			}
			t.Logf("skipped (needs root): %s", l)
			continue
		case strings.Contains(l, "--serve"):
			t.Logf("skipped (serves until interrupted): %s", l)
			continue
		}
		l = strings.TrimPrefix(l, "sudo ")
		l = strings.ReplaceAll(l, "/mnt/alpine", mnt)
		// Drop pipes and redirections: the command's own exit code counts.
		for _, sep := range []string{" | ", " > ", " #"} {
			l, _, _ = strings.Cut(l, sep)
		}
		args := strings.Fields(subst.Replace(l))
		if len(args) == 0 || args[0] != "blobctl" {
			t.Errorf("example %q does not start with blobctl", l)
			continue
		}
		r := blobctl(t, "", f.args(args[1:]...)...)
		if r.code != 0 {
			t.Errorf("example %q: exit %d\n%s", l, r.code, r.stderr)
		}
		ran++
	}
	if ran < 25 {
		t.Fatalf("ran only %d examples", ran)
	}
}

func TestMetricsServe(t *testing.T) {
	f := newFixture(t, 4<<10, 1)
	must(t, f.args("fetch", f.ref)...)
	release := holdInChild(t, f.root)
	defer release()
	must(t, f.args("ls")...) // the holder's tiers count the walks

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		code := run(ctx, f.args("metrics", "--serve", "127.0.0.1:0"), strings.NewReader(""), io.Discard, pw)
		pw.Close()
		done <- code
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("no address printed: %v", err)
	}
	go io.Copy(io.Discard, pr)
	url := strings.TrimSpace(strings.TrimPrefix(line, "serving metrics on "))
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "strata_tier_requests_total") {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, body)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("metrics --serve exit %d after interrupt", code)
	}
}
