package strata

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/admin"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry/credential"
)

func TestLoadFlatKeys(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "strata.yaml")
	yaml := `root: ` + dir + `/root
memory: 64MiB
disk-budget: 2GiB
remote: grpc://127.0.0.1:1
remote-instance: main
remote-header: {x-api-key: s3cret-header}
allow-cidr: [127.0.0.0/8]
mirror: {docker.io: [mirror.local:5000]}
credentials:
  ghcr.io: {username: alice, password: s3cret-pass}
identity-key: s3cret-key-0123456789abcdef-0123456789abcdef
tag-ttl: 5m
proof-ttl: 1h
platform: linux/arm64
overlay-budget: 1GiB
ext4-free: 16MiB
`
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path, Default())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MemoryBudget != 64<<20 || cfg.DiskBudget != 2<<30 || cfg.RemoteInstance != "main" ||
		cfg.TagTTL != Duration(5*time.Minute) || cfg.ProofTTL != Duration(time.Hour) ||
		cfg.Platform != "linux/arm64" || cfg.OverlayBudget != 1<<30 || cfg.Ext4Free != 16<<20 ||
		cfg.AllowCIDRs[0] != "127.0.0.0/8" || cfg.Mirrors["docker.io"][0] != "mirror.local:5000" ||
		cfg.Credentials["ghcr.io"].Username != "alice" || cfg.IdentityKey.IsZero() {
		t.Fatalf("loaded config differs: %s", cfg)
	}
	if s := cfg.String(); strings.Contains(s, "s3cret") {
		t.Fatalf("Config.String shows a secret:\n%s", s)
	}
	if err := os.WriteFile(path, []byte("memroy: 1MiB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path, Default()); err == nil || !strings.Contains(err.Error(), "memroy") {
		t.Fatalf("unknown key: err = %v, want one naming it", err)
	}
}

func TestDefaultRoot(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/x/cache")
	if got := Default().Root; got != "/x/cache/strata" {
		t.Fatalf("with XDG_CACHE_HOME: %s", got)
	}
	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if got := Default().Root; got != "/home/u/.cache/strata" {
		t.Fatalf("with HOME: %s", got)
	}
}

// withMetrics returns cfg with its metrics on reg.
func withMetrics(cfg Config, reg prometheus.Registerer) Config {
	cfg.Metrics = reg
	return cfg
}

func testConfig(t *testing.T) Config {
	cfg := Default()
	cfg.Root = t.TempDir()
	cfg.AllowCIDRs = []string{"127.0.0.0/8"}
	return cfg
}

func TestIdentityKeyPersisted(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t)
	h, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := credential.Basic("r.example", "u", "p")
	id1 := h.Credentials().Identity(c)
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(cfg.Root, identityKeyName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
		t.Fatalf("identity key: mode %v size %d, want 0600 and 32 bytes", fi.Mode().Perm(), fi.Size())
	}
	h, err = Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	id2 := h.Credentials().Identity(c)
	h.Close()
	if id1 != id2 {
		t.Fatalf("identity changed across opens: %s vs %s", id1, id2)
	}
	if public := c.Identity(credential.SecretKey{}); public == id1 {
		t.Fatal("identity keyed with the public key, not the generated one")
	}
	cfg.IdentityKey = credential.NewSecretKey([]byte("fleet-wide-key-0123456789abcdef!"))
	h, err = Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if h.Credentials().Identity(c) != c.Identity(cfg.IdentityKey) {
		t.Fatal("configured identity key not used")
	}
}

func TestAdminSocket(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t)
	sock := filepath.Join(cfg.Root, admin.SocketName)
	// A stale socket from a crashed process.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	reg := prometheus.NewRegistry()
	h, err := Open(ctx, withMetrics(cfg, reg))
	if err != nil {
		t.Fatalf("open over a stale socket: %v", err)
	}
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin socket: %v, %v; want a 0600 socket", fi.Mode(), err)
	}
	// A second Open of the same root fails with ErrLocked; admin.Dial works.
	if _, err := Open(ctx, cfg); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	c, err := admin.Dial(ctx, cfg.Root)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.PID() != os.Getpid() {
		t.Fatalf("pid %d, want %d", c.PID(), os.Getpid())
	}

	// Content put through the host is seen the same directly and remotely.
	data := []byte("hello admin socket")
	d := blob.FromBytes(data)
	if err := h.stack.Put(ctx, d, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	direct, err := h.Admin().Blobs(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	remote, err := c.Blobs(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	dj, _ := json.Marshal(direct)
	rj, _ := json.Marshal(remote)
	if !bytes.Equal(dj, rj) || len(direct) != 2 {
		t.Fatalf("direct %s\nremote %s", dj, rj)
	}
	var buf bytes.Buffer
	if _, err := c.Cat(ctx, d, &buf); err != nil || buf.String() != string(data) {
		t.Fatalf("cat: %q, %v", buf.String(), err)
	}
	missing := blob.FromBytes([]byte("absent"))
	if _, err := c.Stat(ctx, missing); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("remote stat of a missing blob: %v, want ErrNotFound", err)
	}
	if _, err := c.Evict(ctx, admin.EvictRequest{Tier: "nope", ToSizeSet: true}); !errors.Is(err, admin.ErrInvalidRequest) {
		t.Fatalf("remote evict of unknown tier: %v, want admin.ErrInvalidRequest", err)
	}
	recs, err := c.Evict(ctx, admin.EvictRequest{Digest: d.String()})
	if err != nil || len(recs) != 2 {
		t.Fatalf("evict: %+v, %v; want memory and disk", recs, err)
	}
	var m bytes.Buffer
	if err := c.Metrics(ctx, &m); err != nil || !strings.Contains(m.String(), "strata_tier_requests_total") {
		t.Fatalf("metrics: %v\n%s", err, m.String())
	}

	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket left after Close: %v", err)
	}
	if _, err := admin.Dial(ctx, cfg.Root); !errors.Is(err, admin.ErrNoAdmin) {
		t.Fatalf("admin.Dial after Close: %v, want admin.ErrNoAdmin", err)
	}
}

func TestFetchThroughHost(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.InProcess(t)
	img := registrytest.Image(t, registrytest.RandomBytes(t, 1<<16), registrytest.RandomBytes(t, 1<<10))
	registrytest.Push(t, reg, "app:v1", img, nil)
	cfg := testConfig(t)
	h, err := Open(ctx, withMetrics(cfg, prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	fimg, err := h.Fetcher().FetchImage(ctx, reg+"/app:v1", credential.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range fimg.Layers() {
		var buf bytes.Buffer
		if _, err := h.Admin().Cat(ctx, l.Digest(), &buf); !errors.Is(err, blob.ErrNotFound) {
			t.Fatalf("cat of a layer not read yet: %v, want ErrNotFound (layers open lazily)", err)
		}
		rc, err := l.Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatal(err)
		}
		rc.Close()
		if n, err := h.Admin().Cat(ctx, l.Digest(), &buf); err != nil || n != l.Size() {
			t.Fatalf("cat: %d bytes, %v; want %d", n, err, l.Size())
		}
	}
	blobs, err := h.Admin().Blobs(ctx, admin.TierDisk)
	if err != nil {
		t.Fatal(err)
	}
	if len(blobs) != 4 { // manifest, config, 2 layers
		t.Fatalf("disk holds %d blobs, want 4: %+v", len(blobs), blobs)
	}
	for _, b := range blobs {
		if b.MediaType == "" {
			t.Errorf("blob %s has no media type", b.Digest)
		}
	}
	usage, err := h.Admin().Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if usage[1].Tier != admin.TierDisk || usage[1].Blobs != 4 || usage[1].Budget != int64(defaultDiskBudget) {
		t.Fatalf("usage: %+v", usage)
	}
}

// TestDocsConfigExample loads the complete file shown in
// docs/configuration.md, so the documented keys stay the real ones.
func TestDocsConfigExample(t *testing.T) {
	doc, err := os.ReadFile("docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```yaml\n")
	if !ok {
		t.Fatal("docs/configuration.md has no yaml example")
	}
	example, _, _ := strings.Cut(rest, "```")
	path := filepath.Join(t.TempDir(), "strata.yaml")
	if err := os.WriteFile(path, []byte(example), 0o600); err != nil {
		t.Fatal(err)
	}
	// Copied as it is, the example is refused: its identity key is the
	// placeholder an operator must replace.
	if _, err := Load(path, Default()); err == nil || !strings.Contains(err.Error(), "placeholder") {
		t.Fatalf("the documented placeholder identity key loads: %v", err)
	}
	example = strings.Replace(example, identityKeyPlaceholder, "a fleet secret of at least thirty-two bytes, shared", 1)
	if err := os.WriteFile(path, []byte(example), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path, Default())
	if err != nil {
		t.Fatalf("the documented config does not load: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	// Every key of Config appears in the example and in the key table.
	m := map[string]bool{}
	var collect func(rt reflect.Type)
	collect = func(rt reflect.Type) {
		for i := 0; i < rt.NumField(); i++ {
			f := rt.Field(i)
			if f.Anonymous {
				collect(f.Type)
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name != "-" { // not a config key (set by blobctl, not by files)
				m[name] = true
			}
		}
	}
	collect(reflect.TypeOf(Config{}))
	if len(m) < 25 {
		t.Fatalf("found only %d keys: %v", len(m), m)
	}
	for k := range m {
		if !strings.Contains(example, "\n"+k+":") && !strings.HasPrefix(example, k+":") {
			t.Errorf("key %q missing from the documented example", k)
		}
		if !strings.Contains(string(doc), "`"+k+"`") {
			t.Errorf("key %q missing from the documented key table", k)
		}
	}
}

// TestReadmeExample checks that the README's library example is the body
// of Example, which the compiler checks.
func TestReadmeExample(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	body := func(s, start string) string {
		_, rest, ok := strings.Cut(s, start)
		if !ok {
			t.Fatalf("no %q", start)
		}
		b, _, _ := strings.Cut(rest, "\n}\n")
		return b
	}
	if r, e := body(string(readme), "func main() {"), body(string(example), "func Example() {"); r != e {
		t.Fatalf("README example differs from Example:\nREADME:%s\nExample:%s", r, e)
	}
}
