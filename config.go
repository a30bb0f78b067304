package strata

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/yaml"

	"github.com/strata-oci/strata/internal/units"
	"github.com/strata-oci/strata/registry/credential"
)

// Defaults used by Default and for zero fields.
const (
	defaultMemoryBudget  = Size(256 << 20)
	defaultMemoryMaxBlob = Size(4 << 20)
	// maxRemoteReadStreams bounds RemoteReadStreams and RegistryReadStreams.
	maxRemoteReadStreams = 64
	defaultDiskBudget    = Size(10 << 30)
	defaultOverlayBudget = Size(10 << 30)
	defaultExt4Budget    = Size(10 << 30)
	defaultTTL           = Duration(15 * time.Minute)
	// defaultRegistryMaxBlob caps one blob downloaded from a registry:
	// 64 GiB, the same bound the materializers put on a layer's
	// decompressed bytes (layerio.DefaultMaxBytes), so a layer too large
	// to download is one too large to extract anyway. Real layers stay
	// below it (the large ones, in CUDA and ML images, are a few GiB,
	// rarely tens); a registry that declares or streams more is hostile or
	// broken, and is refused early instead of filling the disk.
	defaultRegistryMaxBlob = Size(64 << 30)
)

// Size is a byte count that reads "256MiB", "1GiB", "10GB", "512k" or plain
// bytes ("1048576") in a config file (a string or a number), in a flag and
// in JSON; in Go it is a plain int64 (cfg.DiskBudget = 200 << 30). Binary
// units (KiB, MiB, GiB, TiB) are powers of 1024, decimal units (kB, MB, GB,
// TB) powers of 1000, a bare K, M, G or T is binary. It prints in the
// largest binary unit that divides it.
type Size = units.Size

// Duration is a time.Duration that reads "15m", "90s", "1h30m" or "7d" in a
// config file, a flag and JSON; in Go, Duration(15 * time.Minute).
type Duration = units.Duration

// Config is the whole configuration of a Strata host: the tier stack
// (memory over disk over an optional shared REAPI tier), the registry client
// and credentials, the fetcher's TTLs and platform, the materializers, and
// where metrics and logs go.
//
// It is flat, in Go as on the wire: every key of its YAML or JSON form is
// the name of the blobctl flag that sets it ("memory", "disk-budget",
// "remote", ...), and the Go field beside it says the same with one word per
// concept: a byte budget is ...Budget, a per-blob cap ...MaxBlob. Zero
// fields mean the default where one is stated; Default fills in the rest.
//
// A Config may be printed: credentials and the identity key never show their
// secrets, and remote header values are redacted by String.
type Config struct {
	// Root is the disk tier's directory (required; Default sets it). It
	// also holds the admin socket, the host's identity key (when none is
	// configured) and the materializers' directories by default.
	Root string `json:"root"`

	// MemoryBudget is the memory tier's byte budget; 0 disables the
	// memory tier.
	MemoryBudget Size `json:"memory"`
	// MemoryMaxBlob is the largest blob the memory tier keeps (0: 4 MiB;
	// never more than MemoryBudget).
	MemoryMaxBlob Size `json:"memory-max-blob,omitempty"`
	// DiskBudget bounds the disk tier's blob bytes (LRU eviction above
	// 95%, down to 85%); 0 means unbounded.
	DiskBudget Size `json:"disk-budget"`

	// RemoteEndpoint turns on the shared REAPI tier: "grpc://host:port"
	// (plaintext) or "grpcs://host[:port]". The Remote... fields below
	// configure it.
	RemoteEndpoint string `json:"remote,omitempty"`
	// RemoteInstance is the REAPI instance name.
	RemoteInstance string `json:"remote-instance,omitempty"`
	// RemoteHeaders are sent with every call (API keys); values are never
	// printed.
	RemoteHeaders map[string]string `json:"remote-header,omitempty"`
	// TLS for grpcs:// endpoints: a CA bundle, a client certificate and key
	// (mTLS), and a server name override.
	RemoteTLSCA         string `json:"remote-tls-ca,omitempty"`
	RemoteTLSCert       string `json:"remote-tls-cert,omitempty"`
	RemoteTLSKey        string `json:"remote-tls-key,omitempty"`
	RemoteTLSServerName string `json:"remote-tls-server-name,omitempty"`
	// RemoteStallTimeout is how long a started remote read or write may
	// make no progress before it fails over; 0 means the default, 5s.
	RemoteStallTimeout Duration `json:"remote-stall-timeout,omitempty"`
	// RemoteReadStreams is how many ranged ByteStream reads at once read
	// one large (8 MiB or more) identity blob from the remote tier; 0 or
	// 1: one stream per blob. More pays where one stream is bound by
	// latency or a per-stream server limit (a distant cluster); on a
	// datacenter link one stream is cheaper (see docs/reapi.md).
	RemoteReadStreams int `json:"remote-read-streams,omitempty"`
	// RemoteAnonymousShared lets anonymous callers read and write the
	// shared tier (off: they use only the local tiers).
	RemoteAnonymousShared bool `json:"remote-anonymous-shared,omitempty"`
	// RemoteNoLeases turns off fleet-wide pull collapse: without it,
	// executors sharing the remote tier leave short signed leases there so
	// that one of them pulls a blob from the registry and the others wait
	// for it (docs/reapi.md, "Fill leases").
	RemoteNoLeases bool `json:"remote-no-leases,omitempty"`

	// Mirrors maps a registry host ("docker.io") to mirror hosts tried in
	// order before it.
	Mirrors map[string][]string `json:"mirror,omitempty"`
	// AllowCIDRs opens address ranges the network policy denies by default
	// (loopback, private, link-local, ...), e.g. "127.0.0.0/8".
	AllowCIDRs []string `json:"allow-cidr,omitempty"`
	// Credentials maps a registry host or "*.domain" pattern to its
	// credential ({username, password} or {identityToken} or
	// {registryToken} or {auth}).
	Credentials map[string]credential.Credential `json:"credentials,omitempty"`
	// Keychain enables the Docker/Podman keychain (~/.docker/config.json,
	// credential helpers). Off by default.
	Keychain bool `json:"keychain,omitempty"`
	// RegistryMaxBlob caps the size of one blob (a layer, a config) read
	// from a registry: a blob whose declared size or Content-Length is
	// larger is refused before its body is read, and a download that runs
	// past it is cut off, with an error wrapping registry.ErrTooLarge. 0
	// means the default, 64 GiB; there is no "unlimited".
	RegistryMaxBlob Size `json:"max-blob-size,omitempty"`
	// RegistryReadStreams is how many Range requests at once read one
	// large (more than 8 MiB) blob from a registry; 0 or 1: one GET per
	// blob. More pays where one connection is bound by latency or a
	// per-connection limit (a distant registry, storage behind a CDN); on
	// loopback or a datacenter link one stream is as fast or faster (see
	// registry.ParallelConfig and docs/benchmarks.md).
	RegistryReadStreams int `json:"registry-read-streams,omitempty"`
	// IdentityKey keys credential identities (access proofs) and the
	// signatures of the refs the host writes. Empty: a random key
	// generated once and kept in Root/identity.key. Hosts that share a
	// REAPI tier must all configure the same key.
	IdentityKey credential.SecretKey `json:"identity-key,omitzero"`

	// TagTTL is how long a resolved tag is trusted without asking the
	// registry (0: always ask).
	TagTTL Duration `json:"tag-ttl"`
	// ProofTTL is how long an access proof admits a caller without asking
	// the registry (0: always ask).
	ProofTTL Duration `json:"proof-ttl"`
	// Platform selects the manifest from an index, "os/arch[/variant]";
	// empty means this machine's platform.
	Platform string `json:"platform,omitempty"`

	// OverlayRoot holds extracted layers; default Root/overlay.
	OverlayRoot string `json:"overlay-root,omitempty"`
	// OverlayBudget bounds the bytes of unleased extracted layers; 0:
	// unbounded.
	OverlayBudget Size `json:"overlay-budget"`
	// OverlayUserXattr marks opaque directories with user.overlay.opaque
	// (for mounts with the userxattr option).
	OverlayUserXattr bool `json:"overlay-userxattr,omitempty"`

	// Ext4Dir holds the ext4 images handed out; default Root/ext4.
	Ext4Dir string `json:"ext4-dir,omitempty"`
	// Ext4Free and Ext4FreeInodes are the free space every image gets.
	Ext4Free       Size  `json:"ext4-free,omitempty"`
	Ext4FreeInodes int64 `json:"ext4-free-inodes,omitempty"`
	// Ext4Budget bounds the disk space of the images in Ext4Dir/images:
	// after each materialization the least recently used are removed
	// (images handed out in the last 30 seconds stay; a process that has
	// one open keeps reading it). 0: unbounded.
	Ext4Budget Size `json:"ext4-budget"`

	// NoAdmin turns off the admin endpoint (Root/admin.sock). Without it,
	// blobctl cannot inspect the root while this host holds it.
	NoAdmin bool `json:"no-admin,omitempty"`

	// Metrics receives every metric of the host (tiers, registry, fetcher,
	// materializers, occupancy); nil: none are registered. If it is also a
	// prometheus.Gatherer, the admin endpoint serves it at /metrics. Not a
	// config key.
	Metrics prometheus.Registerer `json:"-"`
	// Logger receives what the components report to an operator (a bad
	// copy skipped and repaired, an index rebuilt, a full filesystem, a
	// failed eviction, leftovers removed); nil: nothing is logged. Never
	// credentials or header values. Not a config key.
	Logger *slog.Logger `json:"-"`

	// Inspect opens an existing root only to look at it (what blobctl's
	// inspection commands do; an executor leaves it false): the root must
	// already be a Strata root (Open fails otherwise, creating nothing), no
	// eviction pass runs and no budget is applied (the budgets are only
	// reported), stale mount leases are kept, and the budgets recorded in
	// the root are left alone. Not a config key.
	Inspect bool `json:"-"`
}

// Default returns the configuration used when nothing is configured:
// a 256 MiB memory tier over a 10 GiB disk tier in the user's cache directory
// ($XDG_CACHE_HOME/strata, else ~/.cache/strata), no remote tier, the
// default network policy, 15 minute tag and proof TTLs, this machine's
// platform, 10 GiB budgets for overlay layers and for ext4 images, and a
// 64 GiB cap on one blob read from a registry.
func Default() Config {
	return Config{
		Root:            defaultRoot(),
		MemoryBudget:    defaultMemoryBudget,
		DiskBudget:      defaultDiskBudget,
		RegistryMaxBlob: defaultRegistryMaxBlob,
		TagTTL:          defaultTTL,
		ProofTTL:        defaultTTL,
		OverlayBudget:   defaultOverlayBudget,
		Ext4Budget:      defaultExt4Budget,
	}
}

// defaultRoot returns $XDG_CACHE_HOME/strata, else ~/.cache/strata, else
// (no home directory) a directory under os.TempDir.
func defaultRoot() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "strata")
	}
	if h, err := os.UserHomeDir(); err == nil && h != "" {
		return filepath.Join(h, ".cache", "strata")
	}
	return filepath.Join(os.TempDir(), "strata-"+fmt.Sprint(os.Getuid()))
}

// registryMaxBlob is the per-blob cap the registry client gets.
func (c Config) registryMaxBlob() int64 {
	if c.RegistryMaxBlob <= 0 {
		return int64(defaultRegistryMaxBlob)
	}
	return int64(c.RegistryMaxBlob)
}

// Load reads a YAML or JSON config file over base (usually Default()):
// keys present in the file replace base's values. Keys match exactly (the
// flag names, lower case): an unknown key, a key in another case and a
// repeated key are errors, as is a value of the wrong type and an
// identity-key shorter than minIdentityKeyBytes or left at the placeholder
// of the documentation. Errors wrap ErrInvalidConfig, name the file, the
// line (where it can be found) and the key, and never echo a secret.
func Load(path string, base Config) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return base, fmt.Errorf("config: %w", err)
	}
	cfg, err := decodeConfig(data, base)
	if err != nil {
		return base, fmt.Errorf("%w %s: %w", ErrInvalidConfig, path, err)
	}
	return cfg, nil
}

// ErrInvalidConfig marks a config file that cannot be used as written.
var ErrInvalidConfig = errors.New("config")

// minIdentityKeyBytes is the shortest identity-key a config file may set.
const minIdentityKeyBytes = 32

// identityKeyPlaceholder is the identity-key value docs/configuration.md
// shows; a fleet that copied it unchanged would share a published key.
const identityKeyPlaceholder = "REPLACE-WITH-32-RANDOM-BYTES-SHARED-BY-THE-FLEET"

// decodeConfig applies the YAML or JSON document data over base, one
// top-level key at a time, so that every error names its key.
func decodeConfig(data []byte, base Config) (Config, error) {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		msg := strings.TrimPrefix(err.Error(), "error converting YAML to JSON: ")
		return base, errors.New(strings.TrimPrefix(msg, "yaml: "))
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(js, &top); err != nil {
		return base, errors.New("want a mapping of keys to values (key: value lines)")
	}
	lines := keyLines(data)
	keys := make([]string, 0, len(top))
	for k := range top {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if lines[keys[i]] != lines[keys[j]] {
			return lines[keys[i]] < lines[keys[j]]
		}
		return keys[i] < keys[j]
	})
	known := configKeys()
	cfg := base
	var errs []error
	for _, k := range keys {
		at := ""
		if n := lines[k]; n > 0 {
			at = fmt.Sprintf("line %d: ", n)
		}
		if !known[k] {
			if lk := strings.ToLower(k); known[lk] {
				errs = append(errs, fmt.Errorf("%skey %q: keys are lower case; write %q", at, k, lk))
			} else {
				errs = append(errs, fmt.Errorf("%sunknown key %q (the keys are the blobctl flag names; docs/configuration.md lists them)", at, k))
			}
			continue
		}
		raw := top[k]
		if k == "identity-key" {
			if err := checkIdentityKey(raw); err != nil {
				errs = append(errs, fmt.Errorf("%s%s: %w", at, k, err))
				continue
			}
		}
		one, err := json.Marshal(map[string]json.RawMessage{k: raw})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s%s: %w", at, k, err))
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(one))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cfg); err != nil {
			errs = append(errs, fmt.Errorf("%s%s: %s", at, k, describeDecodeError(err)))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return base, err
	}
	return cfg, nil
}

// checkIdentityKey refuses an identity-key too short to be a secret, or
// still the documentation's placeholder. It never prints the key.
func checkIdentityKey(raw json.RawMessage) error {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return fmt.Errorf("want a string of at least %d random bytes", minIdentityKeyBytes)
	}
	switch {
	case s == identityKeyPlaceholder || strings.HasPrefix(s, "REPLACE-"):
		return fmt.Errorf("still the placeholder from the documentation; set a secret of at least %d random bytes shared by the fleet (e.g. the output of: openssl rand -base64 48)", minIdentityKeyBytes)
	case len(s) < minIdentityKeyBytes:
		return fmt.Errorf("%d bytes, too short: it must be at least %d random bytes (e.g. the output of: openssl rand -base64 48)", len(s), minIdentityKeyBytes)
	}
	return nil
}

// describeDecodeError turns a JSON decoding error into words about the
// value, without Go type or struct field names.
func describeDecodeError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("got %s, want %s", jsonKind(te.Value), wantKind(te.Type))
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// jsonKind names a JSON value kind as a YAML user knows it.
func jsonKind(v string) string {
	switch {
	case v == "array":
		return "a list"
	case v == "object":
		return "a mapping"
	case v == "bool":
		return "true/false"
	case strings.HasPrefix(v, "number"):
		return "a number"
	case v == "string":
		return "a string"
	}
	return v
}

// wantKind names the kind of value a Go type takes.
func wantKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint64, reflect.Uint32:
		return "a whole number"
	case reflect.Slice:
		return "a list, e.g. [a, b]"
	case reflect.Map:
		if t.Elem().Kind() == reflect.Slice {
			return "a mapping of names to lists"
		}
		return "a mapping of names to values"
	}
	return "another kind of value"
}

// configKeys returns the keys a config file may hold: the JSON names of
// Config's fields.
func configKeys() map[string]bool {
	keys := map[string]bool{}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if f.Anonymous && name == "" {
				walk(f.Type)
				continue
			}
			if name != "" && name != "-" && f.IsExported() {
				keys[name] = true
			}
		}
	}
	walk(reflect.TypeOf(Config{}))
	return keys
}

// topKey matches a "key:" line of a YAML document, or a "key": line of a
// JSON document written one key per line.
var topKey = regexp.MustCompile(`^\s*"?([^\s:"#{}][^:"]*?)"?\s*:`)

// keyLines maps each top-level key to the line it is first set on
// (1-based); keys it cannot place are missing.
func keyLines(data []byte) map[string]int {
	lines := map[string]int{}
	isJSON := bytes.HasPrefix(bytes.TrimSpace(data), []byte("{"))
	for i, l := range strings.Split(string(data), "\n") {
		if !isJSON && (l == "" || l[0] == ' ' || l[0] == '\t') {
			continue // YAML: nested under a key
		}
		if m := topKey.FindStringSubmatch(l); m != nil {
			if _, ok := lines[m[1]]; !ok {
				lines[m[1]] = i + 1
			}
		}
	}
	return lines
}

// Validate checks the configuration without touching the filesystem or the
// network. Errors name the config key (the flag name) at fault.
func (c Config) Validate() error {
	var errs []error
	if c.Root == "" {
		errs = append(errs, errors.New("root: required (the disk tier's directory)"))
	}
	if c.MemoryMaxBlob > 0 && c.MemoryBudget > 0 && c.MemoryMaxBlob > c.MemoryBudget {
		errs = append(errs, fmt.Errorf("memory-max-blob %s exceeds memory %s", c.MemoryMaxBlob, c.MemoryBudget))
	}
	if c.RegistryMaxBlob < 0 {
		errs = append(errs, fmt.Errorf("max-blob-size %d: negative", int64(c.RegistryMaxBlob)))
	}
	if c.RemoteEndpoint == "" && (c.RemoteInstance != "" || len(c.RemoteHeaders) > 0 || c.RemoteTLSCA != "" || c.RemoteTLSCert != "" || c.RemoteTLSKey != "") {
		errs = append(errs, errors.New("remote-*: set without remote (the endpoint)"))
	}
	if c.RegistryReadStreams < 0 || c.RegistryReadStreams > maxRemoteReadStreams {
		errs = append(errs, fmt.Errorf("registry-read-streams %d: want 0 to %d", c.RegistryReadStreams, maxRemoteReadStreams))
	}
	if c.RemoteReadStreams < 0 || c.RemoteReadStreams > maxRemoteReadStreams {
		errs = append(errs, fmt.Errorf("remote-read-streams %d: want 0 to %d", c.RemoteReadStreams, maxRemoteReadStreams))
	}
	if c.RemoteEndpoint != "" {
		if err := checkEndpoint(c.RemoteEndpoint); err != nil {
			errs = append(errs, fmt.Errorf("remote %q: %w", c.RemoteEndpoint, err))
		}
	}
	for _, s := range c.AllowCIDRs {
		if _, err := netip.ParsePrefix(s); err != nil {
			errs = append(errs, fmt.Errorf("allow-cidr %q: not an address range; want an address and a prefix length such as 127.0.0.0/8 or fd00::/8", s))
		}
	}
	if k := c.IdentityKey; !k.IsZero() && bytes.Equal(k.Derive("placeholder-check"), credential.NewSecretKey([]byte(identityKeyPlaceholder)).Derive("placeholder-check")) {
		errs = append(errs, errors.New("identity-key: still the placeholder from the documentation; set a secret of at least 32 random bytes shared by the fleet"))
	}
	return errors.Join(errs...)
}

// checkEndpoint checks the shape of a REAPI endpoint: grpc://HOST:PORT or
// grpcs://HOST[:PORT], nothing else (the reapi package checks it again).
func checkEndpoint(s string) error {
	const want = "want grpc://HOST:PORT or grpcs://HOST[:PORT]"
	u, err := url.Parse(s)
	switch {
	case err != nil || u.Opaque != "":
		return errors.New(want)
	case u.Scheme != "grpc" && u.Scheme != "grpcs":
		return fmt.Errorf("scheme %q: %s", u.Scheme, want)
	case u.User != nil:
		return errors.New("credentials do not belong in the endpoint; send them with remote-header")
	case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return errors.New("only scheme://HOST:PORT is allowed; put the instance name in remote-instance")
	case u.Hostname() == "":
		return errors.New("no host; " + want)
	case u.Scheme == "grpc" && u.Port() == "":
		return errors.New("grpc:// needs a port, e.g. grpc://cache.internal:8980")
	}
	return nil
}

// String describes c with secrets redacted (credentials, identity key and
// remote header values).
func (c Config) String() string {
	red := c
	if len(c.RemoteHeaders) > 0 {
		red.RemoteHeaders = make(map[string]string, len(c.RemoteHeaders))
		for k := range c.RemoteHeaders {
			red.RemoteHeaders[k] = "<redacted>"
		}
	}
	red.Metrics, red.Logger = nil, nil
	b, err := yaml.Marshal(red)
	if err != nil {
		return fmt.Sprintf("config{%v}", err)
	}
	return string(b)
}
