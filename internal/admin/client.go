package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/blob"
)

// ErrNoAdmin means no process answers on the root's admin socket: nothing
// holds the root (open it), or its holder runs with the admin endpoint off.
// It wraps blob.ErrUnavailable.
var ErrNoAdmin = fmt.Errorf("no admin endpoint: %w", blob.ErrUnavailable)

// ErrUntrustedAdmin means the admin socket, its root directory or the
// process answering on it may belong to another user: Dial and the Client
// refuse to talk to it (a Warm would hand it the caller's registry
// password).
var ErrUntrustedAdmin = errors.New("untrusted admin endpoint")

// Client is an Admin that asks the process holding a disk root, over the
// admin socket in that root. It is safe for concurrent use.
type Client struct {
	root string
	pid  int
	hc   *http.Client
}

// Dial connects to the admin endpoint of the process holding root and checks
// that it answers. It fails with an error wrapping ErrNoAdmin when nothing
// listens there, and with one wrapping ErrUntrustedAdmin when root or its
// socket belongs to a user other than this process's effective uid and
// root, when root is writable by group or others, or when the process
// answering runs as another user (its SO_PEERCRED uid, checked on every
// connection the Client makes).
func Dial(ctx context.Context, root string) (*Client, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(abs, SocketName)
	if err := checkAdminPath(abs, sock); err != nil {
		return nil, err
	}
	c := &Client{root: abs, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, "unix", sock)
			if err != nil {
				return nil, err
			}
			if err := checkAdminPeer(conn, sock); err != nil {
				conn.Close()
				return nil, err
			}
			return conn, nil
		},
		DisableCompression: true,
	}}}
	var ping struct {
		Root string `json:"root"`
		PID  int    `json:"pid"`
	}
	if err := c.do(ctx, http.MethodGet, "/v1/ping", nil, &ping); err != nil {
		c.hc.CloseIdleConnections()
		var re *remoteError
		if errors.As(err, &re) || errors.Is(err, ErrUntrustedAdmin) {
			return nil, err
		}
		return nil, fmt.Errorf("%s: %w: %v", sock, ErrNoAdmin, err)
	}
	c.pid = ping.PID
	return c, nil
}

// PID returns the process id of the root's holder.
func (c *Client) PID() int { return c.pid }

// Root returns the root the client talks about.
func (c *Client) Root() string { return c.root }

// do sends a request and decodes a JSON answer into out.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("admin endpoint %s: bad answer: %w", path, err)
	}
	return nil
}

func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	return c.sendAccept(ctx, method, path, in, "")
}

// sendAccept is send with an Accept header (none if accept is empty).
func (c *Client) sendAccept(ctx context.Context, method, path string, in any, accept string) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://admin"+path, body)
	if err != nil {
		return nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := c.hc.Do(req)
	if errors.Is(err, ErrUntrustedAdmin) {
		return nil, fmt.Errorf("admin endpoint of %s: %w", c.root, err)
	}
	if err != nil {
		return nil, fmt.Errorf("admin endpoint of %s: %w: %v", c.root, blob.ErrUnavailable, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var eb errorBody
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
			return nil, fmt.Errorf("admin endpoint of %s: %s: %s", c.root, resp.Status, bytes.TrimSpace(b))
		}
		return nil, fromWire(eb.Error, eb.Kind)
	}
	return resp, nil
}

// Blobs implements Admin.
func (c *Client) Blobs(ctx context.Context, tier string) ([]BlobRecord, error) {
	var out []BlobRecord
	return out, c.do(ctx, http.MethodGet, "/v1/blobs?tier="+url.QueryEscape(tier), nil, &out)
}

// Refs implements Admin.
func (c *Client) Refs(ctx context.Context, tier, namespace string) ([]RefRecord, error) {
	var out []RefRecord
	q := url.Values{"tier": {tier}, "namespace": {namespace}}
	return out, c.do(ctx, http.MethodGet, "/v1/refs?"+q.Encode(), nil, &out)
}

// Stat implements Admin.
func (c *Client) Stat(ctx context.Context, d blob.Digest) ([]BlobRecord, error) {
	if err := blob.ValidateDigest(d); err != nil {
		return nil, err
	}
	var out []BlobRecord
	return out, c.do(ctx, http.MethodGet, "/v1/blobs/"+d.String(), nil, &out)
}

// Cat implements Admin. The bytes are verified again on this side of the
// socket.
func (c *Client) Cat(ctx context.Context, d blob.Digest, w io.Writer) (int64, error) {
	if err := blob.ValidateDigest(d); err != nil {
		return 0, err
	}
	resp, err := c.send(ctx, http.MethodGet, "/v1/blobs/"+d.String()+"/content", nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	size, err := strconv.ParseInt(resp.Header.Get("Strata-Size"), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("admin endpoint of %s: answer without Strata-Size", c.root)
	}
	n, err := blob.Copy(w, resp.Body, d, size)
	if msg := resp.Trailer.Get("Strata-Error"); msg != "" {
		return n, fromWire(msg, resp.Trailer.Get("Strata-Error-Kind"))
	}
	return n, err
}

// Usage implements Admin.
func (c *Client) Usage(ctx context.Context) ([]UsageRecord, error) {
	var out []UsageRecord
	return out, c.do(ctx, http.MethodGet, "/v1/usage", nil, &out)
}

// Evict implements Admin.
func (c *Client) Evict(ctx context.Context, req EvictRequest) ([]EvictRecord, error) {
	var out []EvictRecord
	return out, c.do(ctx, http.MethodPost, "/v1/evict", req, &out)
}

// Verify implements Admin.
func (c *Client) Verify(ctx context.Context, req VerifyRequest) ([]VerifyRecord, error) {
	var out []VerifyRecord
	return out, c.do(ctx, http.MethodPost, "/v1/verify", req, &out)
}

// GC implements Admin.
func (c *Client) GC(ctx context.Context) (GCResult, error) {
	var out GCResult
	return out, c.do(ctx, http.MethodPost, "/v1/gc", struct{}{}, &out)
}

// Mounts implements Admin.
func (c *Client) Mounts(ctx context.Context) ([]MountRecord, error) {
	var out []MountRecord
	return out, c.do(ctx, http.MethodGet, "/v1/mounts", nil, &out)
}

// ReleaseMount implements Admin.
func (c *Client) ReleaseMount(ctx context.Context, dir string) (MountRecord, error) {
	var out MountRecord
	return out, c.do(ctx, http.MethodPost, "/v1/mounts/release", releaseMountRequest{Dir: dir}, &out)
}

// Metrics implements Admin.
func (c *Client) Metrics(ctx context.Context, w io.Writer) error {
	resp, err := c.send(ctx, http.MethodGet, "/metrics", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	return err
}

// Close releases the client's connections; the holder keeps running.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

// trustedUID reports whether uid may own the admin socket and its root or
// answer on it: this process's effective uid, or root.
func trustedUID(uid uint32) bool {
	return uid == 0 || int(uid) == os.Geteuid()
}

// checkAdminPath refuses a root directory or socket that another user could
// have put there or could replace: root (followed if a symbolic link) must
// belong to a trusted uid and not be writable by group or others; the
// socket (not followed) must be a socket of a trusted uid. A missing socket
// is ErrNoAdmin.
func checkAdminPath(root, sock string) error {
	fi, err := os.Stat(root)
	if err != nil {
		return fmt.Errorf("%s: %w: %v", sock, ErrNoAdmin, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: %w: no owner information", root, ErrUntrustedAdmin)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: %w: not a directory", root, ErrUntrustedAdmin)
	}
	if !trustedUID(st.Uid) {
		return fmt.Errorf("%w: root %s belongs to uid %d, not to this process's uid %d or root; refusing to talk to a socket another user controls",
			ErrUntrustedAdmin, root, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%w: root %s has mode %v: other users could replace its admin socket; make it 0700",
			ErrUntrustedAdmin, root, fi.Mode().Perm())
	}
	fi, err = os.Lstat(sock)
	if err != nil {
		return fmt.Errorf("%s: %w: %v", sock, ErrNoAdmin, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%w: %s is not a socket", ErrUntrustedAdmin, sock)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || !trustedUID(st.Uid) {
		uid := int64(-1)
		if ok {
			uid = int64(st.Uid)
		}
		return fmt.Errorf("%w: socket %s belongs to uid %d, not to this process's uid %d or root",
			ErrUntrustedAdmin, sock, uid, os.Geteuid())
	}
	return nil
}

// checkAdminPeer refuses a connection whose server runs as another user
// (the mirror of the server's peerAllowed).
func checkAdminPeer(c net.Conn, sock string) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("%w: %s: not a unix connection", ErrUntrustedAdmin, sock)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrUntrustedAdmin, sock, err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return fmt.Errorf("%w: %s: peer credentials: %v", ErrUntrustedAdmin, sock, errors.Join(err, cerr))
	}
	if !trustedUID(cred.Uid) {
		return fmt.Errorf("%w: the process answering on %s (pid %d) runs as uid %d, not as this process's uid %d or root",
			ErrUntrustedAdmin, sock, cred.Pid, cred.Uid, os.Geteuid())
	}
	return nil
}
