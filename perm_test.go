package strata

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/strata-oci/strata/internal/admin"
	"github.com/strata-oci/strata/internal/testenv"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/strata-oci/strata/registry/credential"
)

// requireRoot fails under CI=true without root and skips otherwise,
// saying what was not tested.
func requireRoot(t *testing.T, what string) {
	t.Helper()
	testenv.RequireRoot(t, what)
}

// TestOpenMakesRootPrivate: whatever mode the disk root had (systemd's
// StateDirectory default and a packaged /var/lib/strata are 0755), Open
// leaves it and the overlay root 0700, so no other user reaches the
// extracted layers under them.
func TestOpenMakesRootPrivate(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		desc string
		mode os.FileMode // 0: the root does not exist yet
	}{
		{desc: "missing root, created by Open", mode: 0},
		{desc: "existing 0755 root", mode: 0o755},
		{desc: "existing 0711 root", mode: 0o711},
		{desc: "existing 0777 root", mode: 0o777},
		{desc: "existing 0700 root", mode: 0o700},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			cfg := testConfig(t)
			// A short root: the admin socket's path must fit a sockaddr_un.
			base, err := os.MkdirTemp("", "st-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(base) })
			cfg.Root = base
			if tt.mode == 0 {
				cfg.Root = filepath.Join(base, "new")
			} else if err := os.Chmod(cfg.Root, tt.mode); err != nil {
				t.Fatal(err)
			}
			h, err := Open(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			for _, p := range []string{cfg.Root, filepath.Join(cfg.Root, "overlay"), filepath.Join(cfg.Root, "overlay", "layers")} {
				fi, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				if got := fi.Mode().Perm(); got != 0o700 {
					t.Errorf("%s: mode %v, want 0700", p, got)
				}
			}
		})
	}
}

// TestOpenRefusesRootOfAnotherUser: a root that belongs to another user is
// refused (it could hold anything, and the user can read what we put in
// it), and its mode is left alone.
func TestOpenRefusesRootOfAnotherUser(t *testing.T) {
	requireRoot(t, "refusing a disk root owned by another user (needs chown)")
	cfg := testConfig(t)
	if err := os.Chmod(cfg.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(cfg.Root, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	h, err := Open(context.Background(), cfg)
	if err == nil {
		h.Close()
		t.Fatalf("Open accepted root %s owned by uid 65534", cfg.Root)
	}
	if !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), "65534") {
		t.Errorf("error %v, want fs.ErrPermission naming uid 65534", err)
	}
	if fi, err := os.Stat(cfg.Root); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("the other user's root was changed: %v %v", fi.Mode(), err)
	}
	if es, _ := os.ReadDir(cfg.Root); len(es) != 0 {
		t.Errorf("Open left %d entries in the other user's root", len(es))
	}
}

// fakeAdmin serves an admin endpoint at sock that answers every request
// and records the bodies it received (what an attacker's listener would
// collect).
type fakeAdmin struct {
	mu       sync.Mutex
	requests int
	bodies   string
}

func serveFakeAdmin(t *testing.T, sock string) *fakeAdmin {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeAdmin{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.requests++
		f.bodies += string(b)
		f.mu.Unlock()
		if r.URL.Path == "/v1/ping" {
			w.Write([]byte(`{"root":"x","pid":1}`))
			return
		}
		w.Write([]byte(`{}`))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return f
}

// TestDialRefusesUntrustedSocket (the red-team test "admin.Dial trusts any
// socket", now passing): admin.Dial refuses a root or socket another user could
// control before sending anything, so no Warm hands over a password.
func TestDialRefusesUntrustedSocket(t *testing.T) {
	tests := []struct {
		desc     string
		rootOnly bool
		setup    func(t *testing.T, root, sock string) // after the fake listens
	}{
		{desc: "root writable by everyone", setup: func(t *testing.T, root, sock string) {
			must(t, os.Chmod(root, 0o777))
		}},
		{desc: "root writable by its group", setup: func(t *testing.T, root, sock string) {
			must(t, os.Chmod(root, 0o770))
		}},
		{desc: "root owned by another user (an attacker's directory)", rootOnly: true, setup: func(t *testing.T, root, sock string) {
			must(t, os.Chown(root, 65534, 65534))
		}},
		{desc: "root is a link to a directory of another user", rootOnly: true, setup: func(t *testing.T, root, sock string) {
			must(t, os.Chown(root, 65534, 65534))
			must(t, os.Chmod(root, 0o700))
			link := root + "-link"
			must(t, os.Symlink(root, link))
			t.Cleanup(func() { os.Remove(link) })
		}},
		{desc: "socket owned by another user in a private root", rootOnly: true, setup: func(t *testing.T, root, sock string) {
			must(t, os.Chmod(root, 0o700))
			must(t, os.Lchown(sock, 65534, 65534))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			if tt.rootOnly {
				requireRoot(t, "admin.Dial against a root or socket of another user (needs chown)")
			}
			root, err := os.MkdirTemp("", "strata-dial-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(root) })
			sock := filepath.Join(root, admin.SocketName)
			fake := serveFakeAdmin(t, sock)
			tt.setup(t, root, sock)
			dialRoot := root
			if strings.Contains(tt.desc, "link") {
				dialRoot = root + "-link"
			}
			ctx := context.Background()
			c, err := admin.Dial(ctx, dialRoot)
			if err == nil {
				defer c.Close()
				c.Warm(ctx, "registry.example/app:v1", credential.Basic("", "alice", "s3cr3t-PASSWORD"), 1, nil)
				t.Errorf("admin.Dial accepted %s", dialRoot)
			} else if !errors.Is(err, admin.ErrUntrustedAdmin) || errors.Is(err, admin.ErrNoAdmin) {
				t.Errorf("error %v, want admin.ErrUntrustedAdmin (and not admin.ErrNoAdmin)", err)
			}
			fake.mu.Lock()
			defer fake.mu.Unlock()
			if fake.requests != 0 || strings.Contains(fake.bodies, "s3cr3t-PASSWORD") {
				t.Errorf("the untrusted listener got %d requests (bodies %q)", fake.requests, fake.bodies)
			}
		})
	}
}

// TestDialMissingSocketIsNoAdmin: a root nobody serves stays admin.ErrNoAdmin
// (blobctl tells the user so), not admin.ErrUntrustedAdmin.
func TestDialMissingSocketIsNoAdmin(t *testing.T) {
	_, err := admin.Dial(context.Background(), t.TempDir())
	if !errors.Is(err, admin.ErrNoAdmin) || errors.Is(err, admin.ErrUntrustedAdmin) {
		t.Fatalf("error %v, want admin.ErrNoAdmin", err)
	}
}

// TestDialRefusesServerOfAnotherUser: even with the root and the socket
// file owned by root (the listener swapped in after the file checks, or
// the files chowned), a server process running as another user is refused
// by its SO_PEERCRED uid before any request is sent.
func TestDialRefusesServerOfAnotherUser(t *testing.T) {
	if os.Getenv("STRATA_PERM_LISTEN") != "" {
		return // the helper process: see the init below
	}
	requireRoot(t, "admin.Dial against a server process of another user (needs a process as nobody)")
	base, err := os.MkdirTemp("", "strata-peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	must(t, os.Chmod(base, 0o755))
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "helper.test")
	must(t, os.WriteFile(bin, b, 0o755))
	root := filepath.Join(base, "root")
	must(t, os.Mkdir(root, 0o700))
	must(t, os.Chown(root, 65534, 65534)) // so that nobody can bind there
	sock := filepath.Join(root, admin.SocketName)

	cmd := exec.Command(bin, "-test.run=^TestDialRefusesServerOfAnotherUser$", "-test.count=1")
	cmd.Env = []string{"STRATA_PERM_LISTEN=" + sock}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe() // the helper exits when this closes
	if err != nil {
		t.Fatal(err)
	}
	must(t, cmd.Start())
	t.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("helper: %v", err)
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "listening" {
		t.Fatalf("helper did not start: %q %v", line, err)
	}
	// Hand the directory and the socket file to root: the file checks pass,
	// only the peer credential tells.
	must(t, os.Chown(root, 0, 0))
	must(t, os.Lchown(sock, 0, 0))
	c, err := admin.Dial(context.Background(), root)
	if err == nil {
		c.Close()
		t.Fatal("admin.Dial accepted a server running as uid 65534")
	}
	if !errors.Is(err, admin.ErrUntrustedAdmin) || !strings.Contains(err.Error(), "runs as uid 65534") {
		t.Errorf("error %v, want admin.ErrUntrustedAdmin from the peer check naming uid 65534", err)
	}
	stdin.Close()
	rest, _ := io.ReadAll(stdout)
	if got := strings.TrimSpace(string(rest)); got != "requests 0" {
		t.Errorf("helper server: %q, want no request received", got)
	}
}

// In the helper process (STRATA_PERM_LISTEN set): serve an admin endpoint
// as the current (unprivileged) user until stdin closes, then print how
// many requests arrived.
func init() {
	sock := os.Getenv("STRATA_PERM_LISTEN")
	if sock == "" {
		return
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Printf("listen: %v\n", err)
		os.Exit(1)
	}
	var mu sync.Mutex
	n := 0
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		mu.Unlock()
		w.Write([]byte(`{"root":"x","pid":1}`))
	}))
	fmt.Println("listening")
	io.Copy(io.Discard, os.Stdin)
	mu.Lock()
	fmt.Printf("requests %d\n", n)
	os.Exit(0)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
