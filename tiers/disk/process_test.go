package disk

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
)

// Child processes: the test binary re-executed with -test.run=TestHelperProcess
// and these variables set.
const (
	envHelper = "STRATA_DISK_TEST_HELPER" // mode: lock, hold, put
	envRoot   = "STRATA_DISK_TEST_ROOT"
)

// exitLocked is the exit code of a "lock" child whose Open got ErrLocked.
const exitLocked = 3

// bigPutSize is the size of the Put the crash test interrupts.
const bigPutSize = 256 << 20

// TestHelperProcess is not a test: it is the body of the child processes
// started by TestLockAcrossProcesses and TestCrashMidPut.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(envHelper)
	if mode == "" {
		t.Skip("child process body for other tests; nothing to test on its own")
	}
	root := os.Getenv(envRoot)
	tr, err := Open(Config{Root: root})
	switch {
	case mode == "lock" && errors.Is(err, ErrLocked):
		fmt.Println(err)
		os.Exit(exitLocked)
	case err != nil:
		fmt.Println(err)
		os.Exit(1)
	}
	switch mode {
	case "lock":
		tr.Close()
		os.Exit(0)
	case "hold":
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin) // until the parent closes our stdin
		tr.Close()
		os.Exit(0)
	case "put":
		small := []byte("committed before the crash")
		if err := tr.Put(context.Background(), blob.FromBytes(small), int64(len(small)), bytes.NewReader(small)); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("small")
		d := bigDigest()
		fmt.Println(d)
		err := tr.Put(context.Background(), d, bigPutSize, &genReader{left: bigPutSize, delay: 5 * time.Millisecond})
		fmt.Println("big put finished:", err) // the parent kills us first
		os.Exit(0)
	}
	os.Exit(2)
}

// genReader yields a deterministic pseudo-random stream of left bytes,
// sleeping delay per Read (so a Put of it is slow enough to interrupt).
type genReader struct {
	left  int64
	delay time.Duration
	rng   *rand.ChaCha8
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.left == 0 {
		return 0, io.EOF
	}
	if g.rng == nil {
		g.rng = rand.NewChaCha8([32]byte{'c', 'r', 'a', 's', 'h'})
	}
	if g.delay > 0 {
		time.Sleep(g.delay)
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	if len(p) > 256<<10 {
		p = p[:256<<10]
	}
	n, _ := g.rng.Read(p)
	g.left -= int64(n)
	return n, nil
}

func bigDigest() blob.Digest {
	h := blob.Algorithm.Digester()
	io.Copy(h.Hash(), &genReader{left: bigPutSize})
	return h.Digest()
}

// child starts the test binary as a helper child in mode on root.
func child(t *testing.T, mode, root string) (*exec.Cmd, *bufio.Reader, io.WriteCloser) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envHelper+"="+mode, envRoot+"="+root)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd, bufio.NewReader(out), stdin
}

func expectLine(t *testing.T, r *bufio.Reader, want string) {
	t.Helper()
	line, err := r.ReadString('\n')
	if strings.TrimSpace(line) != want {
		t.Fatalf("child said %q (%v), want %q", line, err, want)
	}
}

func TestLockInProcess(t *testing.T) {
	root := t.TempDir()
	first := openTier(t, Config{Root: root})
	_, err := Open(Config{Root: root})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), root) {
		t.Errorf("error %q does not name the root", err)
	}
	// The failed Open did not disturb the first tier.
	d := put(t, first, []byte("still fine"))
	mustRead(t, first, d, []byte("still fine"))
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again := openTier(t, Config{Root: root})
	mustRead(t, again, d, []byte("still fine"))
}

func TestLockAcrossProcesses(t *testing.T) {
	root := t.TempDir()
	t.Run("child holds, parent refused", func(t *testing.T) {
		cmd, out, stdin := child(t, "hold", root)
		expectLine(t, out, "ready")
		_, err := Open(Config{Root: root})
		if !errors.Is(err, ErrLocked) {
			t.Fatalf("Open while a child holds the root = %v, want ErrLocked", err)
		}
		if want := fmt.Sprintf("pid %d", cmd.Process.Pid); !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name the holder (%s)", err, want)
		}
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child: %v", err)
		}
		tr := openTier(t, Config{Root: root}) // free again
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("parent holds, child refused", func(t *testing.T) {
		tr := openTier(t, Config{Root: root})
		cmd, out, _ := child(t, "lock", root)
		msg, _ := io.ReadAll(out)
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitLocked {
			t.Fatalf("child Open: %v, output %q; want exit %d (ErrLocked)", err, msg, exitLocked)
		}
		d := put(t, tr, []byte("parent unaffected"))
		mustRead(t, tr, d, []byte("parent unaffected"))
	})
}

func TestCrashMidPut(t *testing.T) {
	root := t.TempDir()
	cmd, out, _ := child(t, "put", root)
	expectLine(t, out, "small")
	line, err := out.ReadString('\n')
	want, perr := blob.ParseDigest(strings.TrimSpace(line))
	if err != nil || perr != nil {
		t.Fatalf("child did not print the digest: %q, %v, %v", line, err, perr)
	}

	// Wait until the big Put's temp file is growing, then SIGKILL.
	tmp := root + "/tmp"
	deadline := time.Now().Add(60 * time.Second)
	var last int64 = -1
	for {
		if time.Now().After(deadline) {
			t.Fatal("the child's temp file never grew")
		}
		var size int64 = -1
		for _, name := range dirEntries(t, tmp) {
			if fi, err := os.Stat(tmp + "/" + name); err == nil {
				size = fi.Size()
			}
		}
		if last > 0 && size > last {
			break
		}
		last = size
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != -1 {
		t.Fatalf("child was not killed mid-Put: %v", err)
	}
	if left := dirEntries(t, tmp); len(left) != 1 {
		t.Fatalf("after the crash tmp holds %v, want one partial file", left)
	}

	tr := openTier(t, Config{Root: root})
	if rs := tr.Reconciled(); rs != (ReconcileStats{TempRemoved: 1}) {
		t.Fatalf("Reconciled() = %+v, want just the temp file removed", rs)
	}
	if left := dirEntries(t, tmp); len(left) != 0 {
		t.Fatalf("temp files left after reopen: %v", left)
	}
	requireMiss(t, tr, want)
	if _, _, err := tr.Open(context.Background(), want); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Open of the interrupted blob = %v, want ErrNotFound", err)
	}
	mustRead(t, tr, blob.FromBytes([]byte("committed before the crash")), []byte("committed before the crash"))
	if u := usage(t, tr); u.Blobs != 1 {
		t.Fatalf("usage %+v, want the one committed blob", u)
	}
	// The reopened root takes new blobs.
	d := put(t, tr, randomBytes(30, 3<<20))
	mustRead(t, tr, d, randomBytes(30, 3<<20))
}
