package host

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/strata-oci/strata/registry/credential"
)

// Defaults used by Default and for zero fields.
const (
	DefaultMemory        = Size(256 << 20)
	DefaultMemoryMaxBlob = Size(64 << 20)
	DefaultDiskBudget    = Size(10 << 30)
	DefaultOverlayBudget = Size(10 << 30)
	DefaultExt4Budget    = Size(10 << 30)
	DefaultTTL           = Duration(15 * 60 * 1e9)
	// DefaultMaxBlobSize caps one blob downloaded from a registry: 64 GiB,
	// the same bound the materializers put on a layer's decompressed
	// bytes (layerio.DefaultMaxBytes), so a layer too large to download
	// is one too large to extract anyway. Real layers stay below it (the
	// large ones, in CUDA and ML images, are a few GiB, rarely tens); a
	// registry that declares or streams more is hostile or broken, and is
	// refused early instead of filling the disk.
	DefaultMaxBlobSize = Size(64 << 30)
)

// Config is the whole configuration of a Strata host: the tier stack
// (memory over disk over an optional shared REAPI tier), the registry client
// and credentials, the fetcher's TTLs and platform, and the materializers.
//
// It is flat on the wire: every key of its YAML or JSON form is the name of
// the blobctl flag that sets it ("memory", "disk-budget", "remote", ...),
// so a config file and a command line read alike. The sub-structs are embedded
// only to group fields in Go.
//
// A Config may be printed: credentials and the identity key never show their
// secrets, and remote header values are redacted by String.
type Config struct {
	Memory
	Disk
	Remote
	Registry
	Fetch
	Overlay
	Ext4
	// NoAdmin turns off the admin endpoint (root/admin.sock). Without it,
	// blobctl cannot inspect the root while this host holds it.
	NoAdmin bool `json:"no-admin,omitempty"`
	// Inspect opens an existing root only to look at it: the root must
	// already be a Strata root (Open fails with an error wrapping ErrNoRoot
	// otherwise, creating nothing), no eviction pass runs and no budget is
	// applied (the budgets are only reported), stale mount leases are kept,
	// and the budgets recorded in the root (see StoredBudgets) are left
	// alone. Not a config key: blobctl sets it for its inspection commands.
	Inspect bool `json:"-"`
}

// Memory configures the memory tier.
type Memory struct {
	// Size is the memory tier's byte budget; 0 disables the memory tier.
	Size Size `json:"memory"`
	// MaxBlob is the largest blob the memory tier keeps (default 64 MiB,
	// never more than Size).
	MaxBlob Size `json:"memory-max-blob,omitempty"`
}

// Disk configures the disk tier. Its root also holds the admin socket, the
// host's identity key (when none is configured) and the materializers'
// directories by default.
type Disk struct {
	// Root is the disk tier's directory. Required (Default sets it).
	Root string `json:"root"`
	// Budget bounds the disk tier's blob bytes (LRU eviction above 95%,
	// down to 85%); 0 means unbounded.
	Budget Size `json:"disk-budget"`
}

// Remote configures the shared REAPI tier, which is on only when Endpoint is
// set.
type Remote struct {
	// Endpoint is "grpc://host:port" (plaintext) or "grpcs://host[:port]".
	Endpoint string `json:"remote,omitempty"`
	// Instance is the REAPI instance name.
	Instance string `json:"remote-instance,omitempty"`
	// Headers are sent with every call (API keys); values are never printed.
	Headers map[string]string `json:"remote-header,omitempty"`
	// TLS for grpcs:// endpoints: a CA bundle, a client certificate and key
	// (mTLS), and a server name override.
	TLSCA         string `json:"remote-tls-ca,omitempty"`
	TLSCert       string `json:"remote-tls-cert,omitempty"`
	TLSKey        string `json:"remote-tls-key,omitempty"`
	TLSServerName string `json:"remote-tls-server-name,omitempty"`
	// StallTimeout is how long a started remote read or write may make no
	// progress before it fails over (reapi.Config.StallTimeout); 0 means
	// the default, 5s.
	StallTimeout Duration `json:"remote-stall-timeout,omitempty"`
	// AnonymousShared lets anonymous callers read and write the shared tier
	// (off: they use only the local tiers).
	AnonymousShared bool `json:"remote-anonymous-shared,omitempty"`
}

// Registry configures the registry client and credentials.
type Registry struct {
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
	// MaxBlobSize caps the size of one blob (a layer, a config) read from
	// a registry: a blob whose declared size or Content-Length is larger
	// is refused before its body is read, and a download that runs past
	// it is cut off, with an error wrapping registry.ErrTooLarge. 0 means
	// DefaultMaxBlobSize (64 GiB); there is no "unlimited".
	MaxBlobSize Size `json:"max-blob-size,omitempty"`
	// IdentityKey keys credential identities (access proofs). Empty: a
	// random key generated once and kept in Root/identity.key. Hosts that
	// share a REAPI tier must all configure the same key.
	IdentityKey credential.SecretKey `json:"identity-key,omitzero"`
}

// Fetch configures the fetcher.
type Fetch struct {
	// TagTTL is how long a resolved tag is trusted without asking the
	// registry (0: always ask).
	TagTTL Duration `json:"tag-ttl"`
	// ProofTTL is how long an access proof admits a caller without asking
	// the registry (0: always ask).
	ProofTTL Duration `json:"proof-ttl"`
	// Platform selects the manifest from an index, "os/arch[/variant]";
	// empty means this machine's platform.
	Platform string `json:"platform,omitempty"`
}

// Overlay configures the overlay materializer.
type Overlay struct {
	// Root holds extracted layers; default Root/overlay.
	Root string `json:"overlay-root,omitempty"`
	// Budget bounds the bytes of unleased extracted layers; 0: unbounded.
	Budget Size `json:"overlay-budget"`
	// UserXattr marks opaque directories with user.overlay.opaque (for
	// mounts with the userxattr option).
	UserXattr bool `json:"overlay-userxattr,omitempty"`
}

// Ext4 configures the ext4 materializer.
type Ext4 struct {
	// WorkDir holds ext4 images handed out; default Root/ext4.
	WorkDir string `json:"ext4-dir,omitempty"`
	// FreeBytes and FreeInodes are the free space every image gets.
	FreeBytes  Size  `json:"ext4-free,omitempty"`
	FreeInodes int64 `json:"ext4-free-inodes,omitempty"`
	// Budget bounds the disk space of the images in WorkDir/images:
	// after each materialization the least recently used are removed
	// (images handed out in the last 30 seconds stay; a process that has
	// one open keeps reading it). 0: unbounded.
	Budget Size `json:"ext4-budget"`
}

// Default returns the configuration used when nothing is configured:
// a 256 MiB memory tier over a 10 GiB disk tier in the user's cache directory
// ($XDG_CACHE_HOME/strata, else ~/.cache/strata), no remote tier, the
// default network policy, 15 minute tag and proof TTLs, this machine's
// platform, 10 GiB budgets for overlay layers and for ext4 images, and a
// 64 GiB cap on one blob read from a registry.
func Default() Config {
	return Config{
		Memory:   Memory{Size: DefaultMemory},
		Disk:     Disk{Root: DefaultRoot(), Budget: DefaultDiskBudget},
		Registry: Registry{MaxBlobSize: DefaultMaxBlobSize},
		Fetch:    Fetch{TagTTL: DefaultTTL, ProofTTL: DefaultTTL},
		Overlay:  Overlay{Budget: DefaultOverlayBudget},
		Ext4:     Ext4{Budget: DefaultExt4Budget},
	}
}

// DefaultRoot returns $XDG_CACHE_HOME/strata, else ~/.cache/strata, else
// (no home directory) a directory under os.TempDir.
func DefaultRoot() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "strata")
	}
	if h, err := os.UserHomeDir(); err == nil && h != "" {
		return filepath.Join(h, ".cache", "strata")
	}
	return filepath.Join(os.TempDir(), "strata-"+fmt.Sprint(os.Getuid()))
}

// maxBlobSize is the per-blob cap the registry client gets.
func (r Registry) maxBlobSize() int64 {
	if r.MaxBlobSize <= 0 {
		return int64(DefaultMaxBlobSize)
	}
	return int64(r.MaxBlobSize)
}

// Load reads a YAML or JSON config file over base (usually Default()):
// keys present in the file replace base's values. Keys match exactly (the
// flag names, lower case): an unknown key, a key in another case and a
// repeated key are errors, as is a value of the wrong type and an
// identity-key shorter than MinIdentityKeyBytes or left at the placeholder
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

// MinIdentityKeyBytes is the shortest identity-key a config file may set.
const MinIdentityKeyBytes = 32

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
		return fmt.Errorf("want a string of at least %d random bytes", MinIdentityKeyBytes)
	}
	switch {
	case s == identityKeyPlaceholder || strings.HasPrefix(s, "REPLACE-"):
		return fmt.Errorf("still the placeholder from the documentation; set a secret of at least %d random bytes shared by the fleet (e.g. the output of: openssl rand -base64 48)", MinIdentityKeyBytes)
	case len(s) < MinIdentityKeyBytes:
		return fmt.Errorf("%d bytes, too short: it must be at least %d random bytes (e.g. the output of: openssl rand -base64 48)", len(s), MinIdentityKeyBytes)
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
// Config's fields, the embedded structs flattened.
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
	if c.Disk.Root == "" {
		errs = append(errs, errors.New("root: required (the disk tier's directory)"))
	}
	if c.Memory.MaxBlob > 0 && c.Memory.Size > 0 && c.Memory.MaxBlob > c.Memory.Size {
		errs = append(errs, fmt.Errorf("memory-max-blob %s exceeds memory %s", c.Memory.MaxBlob, c.Memory.Size))
	}
	if c.Registry.MaxBlobSize < 0 {
		errs = append(errs, fmt.Errorf("max-blob-size %d: negative", int64(c.Registry.MaxBlobSize)))
	}
	if c.Remote.Endpoint == "" && (c.Remote.Instance != "" || len(c.Remote.Headers) > 0 || c.Remote.TLSCA != "" || c.Remote.TLSCert != "" || c.Remote.TLSKey != "") {
		errs = append(errs, errors.New("remote-*: set without remote (the endpoint)"))
	}
	if c.Remote.Endpoint != "" {
		if err := checkEndpoint(c.Remote.Endpoint); err != nil {
			errs = append(errs, fmt.Errorf("remote %q: %w", c.Remote.Endpoint, err))
		}
	}
	for _, s := range c.Registry.AllowCIDRs {
		if _, err := netip.ParsePrefix(s); err != nil {
			errs = append(errs, fmt.Errorf("allow-cidr %q: not an address range; want an address and a prefix length such as 127.0.0.0/8 or fd00::/8", s))
		}
	}
	if k := c.Registry.IdentityKey; !k.IsZero() && bytes.Equal(k.Derive("placeholder-check"), credential.NewSecretKey([]byte(identityKeyPlaceholder)).Derive("placeholder-check")) {
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
	if len(c.Remote.Headers) > 0 {
		red.Remote.Headers = make(map[string]string, len(c.Remote.Headers))
		for k := range c.Remote.Headers {
			red.Remote.Headers[k] = "<redacted>"
		}
	}
	b, err := yaml.Marshal(red)
	if err != nil {
		return fmt.Sprintf("config{%v}", err)
	}
	return string(b)
}
