package strata

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/admin"
)

// Red-team regression tests for the admin socket: path traversal through
// digests, unverified cat, and connections from other users.

// adminHTTP is a raw HTTP client over the admin socket of root, so tests
// can send what the typed admin.Client would refuse to send.
func adminHTTP(root string) *http.Client {
	sock := filepath.Join(root, admin.SocketName)
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
}

func TestRedteamAdminTraversal(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t)
	// A file an attacker would like to read or delete: next to the root,
	// and one inside it that is not a blob.
	outside := filepath.Join(filepath.Dir(cfg.Root), "canary")
	secret := []byte("not a blob")
	if err := os.WriteFile(outside, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	h, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	inside := filepath.Join(cfg.Root, identityKeyName)
	key, err := os.ReadFile(inside)
	if err != nil {
		t.Fatal(err)
	}
	hc := adminHTTP(cfg.Root)
	hex := strings.Repeat("a", 62)
	digests := []struct {
		desc string
		d    string
	}{
		{"dot-dot after the algorithm", "sha256:../../canary"},
		{"dot-dot to the identity key", "sha256:../" + identityKeyName},
		{"absolute path", "/etc/passwd"},
		{"algorithm is a path", "../../canary:" + hex + "aa"},
		{"slash inside the hex", "sha256:" + hex[:30] + "/" + hex[:33]},
		{"uppercase hex", "sha256:" + strings.ToUpper(hex) + "AA"},
		{"short hex", "sha256:" + hex[:10]},
		{"nul byte", "sha256:" + hex + "a\x00"},
	}
	for _, tc := range digests {
		t.Run(tc.desc, func(t *testing.T) {
			esc := url.PathEscape(tc.d)
			for _, path := range []string{"/v1/blobs/" + esc, "/v1/blobs/" + esc + "/content"} {
				resp, err := hc.Get("http://admin" + path)
				if err != nil {
					t.Fatalf("GET %s: %v", path, err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					t.Errorf("GET %s = 200 (%q), want an error", path, body)
				}
				if bytes.Contains(body, secret) || bytes.Contains(body, key) {
					t.Errorf("GET %s served a file that is not a blob", path)
				}
			}
			req := fmt.Sprintf(`{"digest":%q}`, tc.d)
			resp, err := hc.Post("http://admin/v1/evict", "application/json", strings.NewReader(req))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("evict %q = %d %s, want 400", tc.d, resp.StatusCode, body)
			}
			if _, err := h.Admin().Stat(ctx, blob.Digest(tc.d)); !errors.Is(err, blob.ErrInvalidDigest) {
				t.Errorf("Stat(%q) = %v, want ErrInvalidDigest", tc.d, err)
			}
		})
	}
	if b, err := os.ReadFile(outside); err != nil || !bytes.Equal(b, secret) {
		t.Errorf("file outside the root changed: %q, %v", b, err)
	}
	if b, err := os.ReadFile(inside); err != nil || !bytes.Equal(b, key) {
		t.Errorf("identity key changed: %v", err)
	}
}

// cat over the socket verifies: a blob corrupted on disk (same size) is
// reported as a mismatch by the typed client, never returned as good.
func TestRedteamAdminCatVerifies(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t)
	h, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	data := bytes.Repeat([]byte("strata admin cat "), 4096)
	d := blob.FromBytes(data)
	if err := h.stack.Put(ctx, d, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Admin().Evict(ctx, admin.EvictRequest{Digest: d.String(), Tier: admin.TierMemory}); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(cfg.Root, "blobs", "sha256", d.Hex()[:2], d.Hex())
	bad := bytes.Clone(data)
	bad[len(bad)-1] ^= 0xff
	if err := os.WriteFile(file, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := admin.Dial(ctx, cfg.Root)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The socket first: it must report the mismatch. The disk tier then
	// drops the corrupt file, so a direct cat finds nothing; either way no
	// caller gets the corrupt bytes as good.
	for i, a := range []admin.Admin{c, h.Admin()} {
		var buf bytes.Buffer
		_, err := a.Cat(ctx, d, &buf)
		if i == 0 && !errors.Is(err, blob.ErrMismatch) {
			t.Errorf("socket cat of a corrupt blob = %v (%d bytes), want ErrMismatch", err, buf.Len())
		}
		if i == 1 && !errors.Is(err, blob.ErrMismatch) && !errors.Is(err, blob.ErrNotFound) {
			t.Errorf("direct cat after the mismatch = %v, want ErrMismatch or ErrNotFound", err)
		}
	}
	if _, err := os.Stat(file); err == nil {
		t.Errorf("corrupt file %s still in the disk tier after a verified read failed", file)
	}
}

// Another user cannot use the admin socket: with the socket's mode
// loosened to 0666 (a careless operator), the peer credential check
// still refuses the connection. Needs root (to run a process as nobody).
func TestRedteamAdminOtherUser(t *testing.T) {
	if os.Getenv("STRATA_REDTEAM_DIAL") != "" {
		return // the helper process: see redteamDial
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to run a process as another user (CI=true)")
		}
		t.Skip("not root: the admin socket's peer check against another user is not tested")
	}
	ctx := context.Background()
	base, err := os.MkdirTemp("", "strata-redteam-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	cfg := Default()
	cfg.Root = filepath.Join(base, "root")
	cfg.AllowCIDRs = []string{"127.0.0.0/8"}
	h, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "helper.test")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(cfg.Root, admin.SocketName)
	dial := func() string {
		cmd := exec.Command(bin, "-test.run=^TestRedteamAdminOtherUser$", "-test.count=1")
		cmd.Env = []string{"STRATA_REDTEAM_DIAL=" + sock}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, _ := cmd.CombinedOutput()
		for _, l := range strings.Split(string(out), "\n") {
			if s, ok := strings.CutPrefix(l, "redteam-dial: "); ok {
				return s
			}
		}
		t.Fatalf("helper gave no answer: %s", out)
		return ""
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	// As installed: the 0700 root and the 0600 socket keep nobody out.
	if got := dial(); !strings.HasPrefix(got, "error") {
		t.Errorf("nobody through the default permissions: %s, want a connect error", got)
	}
	if fi, err := os.Stat(cfg.Root); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("root %s mode %v, want no access for group and others", cfg.Root, fi.Mode())
	}
	// Loosened: the server's peer check still refuses.
	if err := os.Chmod(cfg.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	if got := dial(); got != "403" {
		t.Errorf("nobody through a 0666 socket: %s, want 403", got)
	}
}

// In the helper process (STRATA_REDTEAM_DIAL set), dial the socket and
// print what happened.
func init() {
	sock := os.Getenv("STRATA_REDTEAM_DIAL")
	if sock == "" {
		return
	}
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := hc.Get("http://admin/v1/blobs")
	if err != nil {
		fmt.Printf("redteam-dial: error %v\n", err)
		os.Exit(0)
	}
	resp.Body.Close()
	fmt.Printf("redteam-dial: %d\n", resp.StatusCode)
	os.Exit(0)
}
