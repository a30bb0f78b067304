package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/internal/registrytest"
)

// openPTY returns the two ends of a new pseudo-terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Fatalf("pty number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Fatalf("open pty: %v", err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	if err := unix.IoctlSetWinsize(int(s.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: 120}); err != nil {
		t.Fatalf("set the terminal size: %v", err)
	}
	return m, s
}

// syncBuf is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// gateLayer wraps a registry so that a GET of the blob named by *digest
// sends half of its body, then waits for release before the rest.
func gateLayer(digest *atomic.Value, release <-chan struct{}) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			d, _ := digest.Load().(string)
			if r.Method != http.MethodGet || d == "" || !strings.HasSuffix(r.URL.Path, "/blobs/"+d) {
				h.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			body := rec.Body.Bytes()
			_, _ = w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
			_, _ = w.Write(body[len(body)/2:])
		})
	}
}

// TestProgressOnTerminal runs blobctl with stderr on a pseudo-terminal:
// fetch and materialize draw bars there for the layer being downloaded or
// converted, while stdout (a pipe) gets the plain records only.
func TestProgressOnTerminal(t *testing.T) {
	var digest atomic.Value
	release := make(chan struct{})
	reg := registrytest.InProcess(t, gateLayer(&digest, release))
	f := newFixtureAt(t, reg, 512<<10, 1)
	digests, _ := f.layers(t)
	short := strings.TrimPrefix(digests[0], "sha256:")[:12]
	bin := buildBinary(t)

	for _, tc := range []struct {
		desc string
		args []string
		bar  string // on the terminal while the layer is held
		out  string // on stdout
	}{
		{"fetch", f.args("fetch", f.ref), "download " + short, "fetched " + f.ref},
		{"materialize", f.args("materialize", f.ref, "--format", "ext4", "--out", filepath.Join(t.TempDir(), "img.ext4")), "convert " + short, "wrote "},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "root") // nothing cached: the layer is read
			args := append([]string{"--root", root}, tc.args[2:]...)
			master, slave := openPTY(t)
			var term syncBuf
			copied := make(chan struct{})
			go func() { _, _ = io.Copy(&term, master); close(copied) }()
			digest.Store(digests[0])
			cmd := exec.Command(bin, args...)
			var stdout bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, slave
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			// The layer is held half-read until its bar is on the terminal.
			deadline := time.Now().Add(time.Minute) // a bound against a hang, not a speed check
			for !strings.Contains(term.String(), tc.bar) {
				if time.Now().After(deadline) {
					t.Fatalf("no %q on the terminal; it shows %q", tc.bar, term.String())
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
			if strings.Contains(stdout.String(), "\x1b") || !strings.Contains(stdout.String(), tc.out) {
				t.Errorf("stdout %q: want plain records without terminal escapes", stdout.String())
			}
		})
	}
}

// TestProgressInPipe: with stderr in a pipe, auto shows nothing, plain
// shows one line when each step starts and ends, and --quiet leaves only
// the summary on stdout.
func TestProgressInPipe(t *testing.T) {
	f := newFixture(t, 64<<10, 2)
	digests, _ := f.layers(t)
	short := func(i int) string { return strings.TrimPrefix(digests[i], "sha256:")[:12] }
	fresh := func() []string {
		return []string{"--root", filepath.Join(t.TempDir(), "root"), "--allow-cidr", "127.0.0.0/8"}
	}

	r := blobctl(t, "", append(fresh(), "fetch", f.ref)...)
	if r.code != 0 || r.stderr != "" {
		t.Errorf("auto in a pipe: exit %d, stderr %q; want no progress", r.code, r.stderr)
	}

	r = blobctl(t, "", append(fresh(), "fetch", f.ref, "--progress", "plain")...)
	if r.code != 0 {
		t.Fatalf("plain: exit %d; %s", r.code, r.stderr)
	}
	for i := range digests {
		// One line when the download starts, one when it is done.
		if strings.Count(r.stderr, "download "+short(i)+" ") != 2 || strings.Count(r.stderr, "download "+short(i)+" done: ") != 1 {
			t.Errorf("plain fetch: want a start and a done line for %s in %q", short(i), r.stderr)
		}
	}
	if !strings.HasPrefix(r.stderr, "resolving "+f.ref+"\n") {
		t.Errorf("plain fetch does not start with the resolving step: %q", r.stderr)
	}

	out := filepath.Join(t.TempDir(), "img.ext4")
	r = blobctl(t, "", append(fresh(), "materialize", f.ref, "--format", "ext4", "--out", out, "--progress", "plain")...)
	if r.code != 0 {
		t.Fatalf("plain materialize: exit %d; %s", r.code, r.stderr)
	}
	for _, w := range []string{"resolving " + f.ref, "building the ext4 image of " + f.ref, "convert " + short(0) + " done: ", "convert " + short(1) + " done: ", "writing " + out} {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("plain materialize: no %q in %q", w, r.stderr)
		}
	}
	r = blobctl(t, "", append(fresh(), "materialize", f.ref, "--format", "overlay", "--progress", "plain")...)
	if r.code != 0 || !strings.Contains(r.stderr, "extract "+short(1)+" done: ") || !strings.Contains(r.stderr, "materialized "+f.ref+": 2 layers in ") {
		t.Errorf("plain overlay: exit %d, stderr %q", r.code, r.stderr)
	}

	r = blobctl(t, "", append(fresh(), "fetch", f.ref, "--quiet", "--progress", "plain")...)
	if r.code != 0 || r.stderr != "" || strings.Count(r.stdout, "\n") != 2 || !strings.HasPrefix(r.stdout, "fetched "+f.ref) {
		t.Errorf("--quiet: exit %d, stdout %q, stderr %q; want the two summary lines only", r.code, r.stdout, r.stderr)
	}
	if r := blobctl(t, "", append(fresh(), "--progress", "fancy", "fetch", f.ref)...); r.code != exitUsage {
		t.Errorf("--progress fancy: exit %d, want %d", r.code, exitUsage)
	}
}
