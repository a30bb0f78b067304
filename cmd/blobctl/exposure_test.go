package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/fakes"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/strata-oci/strata/internal/testenv"
)

// Local exposure: what blobctl leaves on disk and in argv must not hand a
// private image or a secret to another local user.

// withUmask runs the rest of the test under umask mask.
func withUmask(t *testing.T, mask int) {
	t.Helper()
	old := syscall.Umask(mask)
	t.Cleanup(func() { syscall.Umask(old) })
}

func perm(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// TestExt4OutPrivate: --out is written 0600 under the usual umask 022 (it
// holds every file of a possibly private image), also when it replaces an
// existing 0644 file; a symlink planted at --out is replaced, and the file
// it points at is left alone.
func TestExt4OutPrivate(t *testing.T) {
	withUmask(t, 0o022)
	f := newFixture(t, 8<<10, 2)
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("not yours"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		desc    string
		prepare func(out string)
	}{
		{desc: "new file", prepare: func(string) {}},
		{desc: "existing 0644 file", prepare: func(out string) {
			if err := os.WriteFile(out, []byte("old"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{desc: "symlink to another file", prepare: func(out string) {
			if err := os.Symlink(victim, out); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for i, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			out := filepath.Join(dir, "img"+itoa(i)+".ext4")
			tt.prepare(out)
			r := decode[ext4Result](t, must(t, f.args("materialize", f.ref, "--format", "ext4", "--out", out, "--json")...))
			fi, err := os.Lstat(out)
			if err != nil {
				t.Fatal(err)
			}
			if !fi.Mode().IsRegular() || fi.Size() != r.Size {
				t.Fatalf("--out is %v of %d bytes, want a regular file of %d", fi.Mode(), fi.Size(), r.Size)
			}
			if got := fi.Mode().Perm(); got != 0o600 {
				t.Errorf("--out mode %v, want 0600", got)
			}
			if b, err := os.ReadFile(victim); err != nil || string(b) != "not yours" || perm(t, victim) != 0o644 {
				t.Errorf("the symlink's target was written through: %q %v", b, err)
			}
		})
	}
}

func itoa(i int) string { return string(rune('0' + i)) }

// TestExt4DirPrivate: an --ext4-dir outside the (private) root, even one
// that exists with mode 0755, ends up 0700 with its images/ and tmp/, and
// the images in it are 0400: no other local user reads a private image.
func TestExt4DirPrivate(t *testing.T) {
	withUmask(t, 0o022)
	f := newFixture(t, 8<<10, 2)
	tests := []struct {
		desc  string
		exist bool
	}{
		{desc: "created by blobctl", exist: false},
		{desc: "existing 0755 dir", exist: true},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			ext4Dir := filepath.Join(t.TempDir(), "ext4")
			if tt.exist {
				for _, d := range []string{ext4Dir, filepath.Join(ext4Dir, "images"), filepath.Join(ext4Dir, "tmp")} {
					if err := os.Mkdir(d, 0o755); err != nil {
						t.Fatal(err)
					}
				}
			}
			out := filepath.Join(t.TempDir(), "img.ext4")
			must(t, f.args("--ext4-dir", ext4Dir, "materialize", f.ref, "--format", "ext4", "--out", out, "--keep")...)
			for _, d := range []string{ext4Dir, filepath.Join(ext4Dir, "images"), filepath.Join(ext4Dir, "tmp")} {
				if got := perm(t, d); got != 0o700 {
					t.Errorf("%s: mode %v, want 0700", d, got)
				}
			}
			imgs, err := filepath.Glob(filepath.Join(ext4Dir, "images", "*.ext4"))
			if err != nil || len(imgs) != 1 {
				t.Fatalf("images in %s: %v %v, want one", ext4Dir, imgs, err)
			}
			if got := perm(t, imgs[0]); got != 0o400 {
				t.Errorf("%s: mode %v, want 0400", imgs[0], got)
			}
			// The local image is still used by the next call.
			r := decode[ext4Result](t, must(t, f.args("--ext4-dir", ext4Dir, "materialize", f.ref, "--format", "ext4", "--out", out, "--keep", "--json")...))
			if !r.FromCache {
				t.Errorf("second materialize did not reuse the local image: %+v", r)
			}
		})
	}
}

// TestExt4DirOfAnotherUser: an --ext4-dir another user owns is refused (that
// user could read every image put there), and left as it was.
func TestExt4DirOfAnotherUser(t *testing.T) {
	testenv.RequireRoot(t, "refusing an --ext4-dir owned by another user (needs chown)")
	f := newFixture(t, 8<<10, 1)
	ext4Dir := filepath.Join(t.TempDir(), "ext4")
	if err := os.Mkdir(ext4Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(ext4Dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	r := blobctl(t, "", f.args("--ext4-dir", ext4Dir, "materialize", f.ref, "--format", "ext4", "--out", filepath.Join(t.TempDir(), "img.ext4"))...)
	if r.code == 0 || !strings.Contains(r.stderr, "65534") {
		t.Fatalf("exit %d, stderr %q; want a refusal naming uid 65534", r.code, r.stderr)
	}
	if got := perm(t, ext4Dir); got != 0o755 {
		t.Errorf("the other user's dir changed to %v", got)
	}
	if es, _ := os.ReadDir(ext4Dir); len(es) != 0 {
		t.Errorf("blobctl left %d entries in the other user's dir", len(es))
	}
}

// headerREAPI is a REAPI fake that records the x-api-key values of every
// call it receives.
type headerREAPI struct {
	endpoint string
	mu       sync.Mutex
	calls    int
	values   map[string]bool
}

func startHeaderREAPI(t *testing.T) *headerREAPI {
	t.Helper()
	h := &headerREAPI{values: map[string]bool{}}
	record := func(ctx context.Context) {
		md, _ := metadata.FromIncomingContext(ctx)
		h.mu.Lock()
		defer h.mu.Unlock()
		h.calls++
		h.values[strings.Join(md.Get("x-api-key"), "|")] = true
	}
	cas, ac := fakes.NewCAS(), fakes.NewActionCache()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
			record(ctx)
			return next(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, next grpc.StreamHandler) error {
			record(ss.Context())
			return next(srv, ss)
		}))
	bsgrpc.RegisterByteStreamServer(srv, cas)
	repb.RegisterContentAddressableStorageServer(srv, cas)
	repb.RegisterActionCacheServer(srv, ac)
	repb.RegisterCapabilitiesServer(srv, fakes.NewExec(t, ac, cas))
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	h.endpoint = "grpc://" + lis.Addr().String()
	return h
}

// seen returns the calls received and the distinct x-api-key values they
// carried.
func (h *headerREAPI) seen() (int, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var vs []string
	for v := range h.values {
		vs = append(vs, v)
	}
	return h.calls, vs
}

// TestRemoteHeaderNotFromArgv: a header on the command line is refused with
// a message that says how to pass it, and the value is not repeated (nor
// sent anywhere).
func TestRemoteHeaderNotFromArgv(t *testing.T) {
	const secret = "s3cret-api-key-in-argv"
	srv := startHeaderREAPI(t)
	root := filepath.Join(t.TempDir(), "root")
	tests := []struct {
		desc string
		args []string
	}{
		{desc: "KEY=VALUE", args: []string{"--remote-header", "x-api-key=" + secret, "du"}},
		{desc: "--remote-header=KEY=VALUE", args: []string{"--remote-header=x-api-key=" + secret, "du"}},
		{desc: "a bare value", args: []string{"--remote-header", secret, "du"}},
		{desc: "after the command", args: []string{"du", "--remote-header", "x-api-key=" + secret}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			args := append([]string{"--root", root, "--remote", srv.endpoint, "--remote-instance", "instance"}, tt.args...)
			r := blobctl(t, "", args...)
			if r.code != exitUsage {
				t.Errorf("exit %d, want %d (usage)", r.code, exitUsage)
			}
			for _, how := range []string{"--remote-header-env", "--remote-header-stdin", "--config"} {
				if !strings.Contains(r.stderr, how) {
					t.Errorf("the message does not mention %s: %q", how, r.stderr)
				}
			}
			if strings.Contains(r.stdout+r.stderr, "s3cret") {
				t.Errorf("the value was echoed: stdout %q stderr %q", r.stdout, r.stderr)
			}
		})
	}
	if calls, _ := srv.seen(); calls != 0 {
		t.Errorf("the REAPI server received %d calls from refused command lines", calls)
	}
}

// TestRemoteHeaderFromEnvAndStdin: --remote-header-env and
// --remote-header-stdin set the header every call carries, replacing the
// config file's header of the same name (in another case).
func TestRemoteHeaderFromEnvAndStdin(t *testing.T) {
	const fromEnv, fromStdin = "key-from-env", "key-from-stdin"
	t.Setenv("STRATA_TEST_API_KEY", fromEnv)
	conf := filepath.Join(t.TempDir(), "strata.yaml")
	if err := os.WriteFile(conf, []byte("remote-header: {X-Api-Key: key-from-file}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		desc  string
		stdin string
		args  []string
		want  string
	}{
		{desc: "config file", args: []string{"--config", conf}, want: "key-from-file"},
		{desc: "env", args: []string{"--remote-header-env", "x-api-key=STRATA_TEST_API_KEY"}, want: fromEnv},
		{desc: "env over the file", args: []string{"--config", conf, "--remote-header-env", "x-api-key=STRATA_TEST_API_KEY"}, want: fromEnv},
		{desc: "stdin", stdin: fromStdin + "\n", args: []string{"--remote-header-stdin", "x-api-key"}, want: fromStdin},
		{desc: "stdin over the file, no newline", stdin: fromStdin, args: []string{"--config", conf, "--remote-header-stdin", "X-API-KEY"}, want: fromStdin},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			srv := startHeaderREAPI(t)
			args := append([]string{"--root", filepath.Join(t.TempDir(), "root"), "--remote", srv.endpoint, "--remote-instance", "instance"}, tt.args...)
			r := blobctl(t, tt.stdin, append(args, "gc", "--json")...) // creates the root; du would refuse a new one
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			calls, values := srv.seen()
			if calls == 0 || len(values) != 1 || values[0] != tt.want {
				t.Fatalf("%d calls carried x-api-key values %q, want every one %q", calls, values, tt.want)
			}
		})
	}
}

// TestRemoteHeaderSourceErrors: the header sources fail clearly and never
// print a value.
func TestRemoteHeaderSourceErrors(t *testing.T) {
	t.Setenv("STRATA_TEST_EMPTY", "")
	srv := startHeaderREAPI(t)
	tests := []struct {
		desc  string
		stdin string
		args  []string
		want  string
	}{
		{desc: "two readers of stdin", stdin: "s3cret\n", args: []string{"--username", "u", "--password-stdin", "--remote-header-stdin", "x-api-key"}, want: "both read stdin"},
		{desc: "empty stdin", args: []string{"--remote-header-stdin", "x-api-key"}, want: "stdin held no value"},
		{desc: "unset variable", args: []string{"--remote-header-env", "x-api-key=STRATA_TEST_NO_SUCH_s3cret"}, want: "unset or empty"},
		{desc: "empty variable", args: []string{"--remote-header-env", "x-api-key=STRATA_TEST_EMPTY"}, want: "unset or empty"},
		{desc: "no variable name", args: []string{"--remote-header-env", "x-api-key"}, want: "KEY=ENVVAR"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			args := append([]string{"--root", filepath.Join(t.TempDir(), "root"), "--remote", srv.endpoint, "--remote-instance", "instance"}, tt.args...)
			r := blobctl(t, tt.stdin, append(args, "du")...)
			if r.code != exitUsage || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", r.code, r.stderr, exitUsage, tt.want)
			}
			if strings.Contains(r.stderr, "s3cret") {
				t.Errorf("stderr repeats a value: %q", r.stderr)
			}
		})
	}
}

// mountID returns the id of the mount dir is on (the topmost one when dir
// is a mount point).
func mountID(t *testing.T, dir string) uint64 {
	t.Helper()
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, dir, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &stx); err != nil {
		t.Fatal(err)
	}
	if stx.Mask&unix.STATX_MNT_ID == 0 {
		t.Fatal("the kernel does not report STATX_MNT_ID")
	}
	return stx.Mnt_id
}

// TestMountTargetRefused: --mount refuses a symlink (another user may have
// planted it to aim the mount elsewhere), a file, a directory another user
// owns and an existing mount point, before any work, and mounts nothing.
func TestMountTargetRefused(t *testing.T) {
	testenv.RequireRoot(t, "materialize --mount refusing unsafe targets (mount, chown)")
	f := newFixture(t, 8<<10, 2)
	tests := []struct {
		desc    string
		prepare func(t *testing.T, dir string) (target, watch string)
		want    string
	}{
		{desc: "symlink to a directory", want: "symlink", prepare: func(t *testing.T, dir string) (string, string) {
			real := filepath.Join(dir, "real")
			if err := os.Mkdir(real, 0o755); err != nil {
				t.Fatal(err)
			}
			link := filepath.Join(dir, "mnt")
			if err := os.Symlink(real, link); err != nil {
				t.Fatal(err)
			}
			return link, real
		}},
		{desc: "dangling symlink", want: "symlink", prepare: func(t *testing.T, dir string) (string, string) {
			link := filepath.Join(dir, "mnt")
			if err := os.Symlink(filepath.Join(dir, "later"), link); err != nil {
				t.Fatal(err)
			}
			return link, ""
		}},
		{desc: "regular file", want: "not a directory", prepare: func(t *testing.T, dir string) (string, string) {
			p := filepath.Join(dir, "file")
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			return p, ""
		}},
		{desc: "another user's directory", want: "uid 65534", prepare: func(t *testing.T, dir string) (string, string) {
			p := filepath.Join(dir, "mnt")
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(p, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			return p, p
		}},
		{desc: "existing mount point", want: "already a mount point", prepare: func(t *testing.T, dir string) (string, string) {
			p := filepath.Join(dir, "mnt")
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mount("tmpfs", p, "tmpfs", 0, "size=1m"); err != nil {
				t.Fatalf("mount tmpfs: %v", err)
			}
			t.Cleanup(func() {
				// Twice if an overlay went on top of it.
				for i := 0; i < 2 && unix.Unmount(p, unix.MNT_DETACH) == nil; i++ {
				}
			})
			if err := os.WriteFile(filepath.Join(p, "kept"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			return p, p
		}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			dir := t.TempDir()
			target, watch := tt.prepare(t, dir)
			var before uint64
			if watch != "" {
				before = mountID(t, watch)
			}
			r := blobctl(t, "", f.args("materialize", f.ref, "--format", "overlay", "--mount", target, "--json")...)
			if watch != "" && mountID(t, watch) != before {
				// The old behaviour: the overlay went where the link pointed
				// or over the existing mount. Take it off again.
				unix.Unmount(watch, unix.MNT_DETACH)
				t.Errorf("blobctl mounted on %s", watch)
			}
			if r.code != exitUsage || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", r.code, r.stderr, exitUsage, tt.want)
			}
			if fi, err := os.Lstat(target); err != nil || (tt.want == "symlink" && fi.Mode()&os.ModeSymlink == 0) {
				t.Errorf("the target changed: %v %v", fi, err)
			}
		})
	}
}
