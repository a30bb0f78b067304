package host

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"sigs.k8s.io/yaml"

	"github.com/strata-oci/strata/registry/credential"
)

// Defaults used by Default and for zero fields.
const (
	DefaultMemory        = Size(256 << 20)
	DefaultMemoryMaxBlob = Size(64 << 20)
	DefaultDiskBudget    = Size(10 << 30)
	DefaultOverlayBudget = Size(10 << 30)
	DefaultTTL           = Duration(15 * 60 * 1e9)
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
}

// Default returns the configuration used when nothing is configured:
// a 256 MiB memory tier over a 10 GiB disk tier in the user's cache directory
// ($XDG_CACHE_HOME/strata, else ~/.cache/strata), no remote tier, the
// default network policy, 15 minute tag and proof TTLs, this machine's
// platform, and a 10 GiB overlay layer budget.
func Default() Config {
	return Config{
		Memory:  Memory{Size: DefaultMemory},
		Disk:    Disk{Root: DefaultRoot(), Budget: DefaultDiskBudget},
		Fetch:   Fetch{TagTTL: DefaultTTL, ProofTTL: DefaultTTL},
		Overlay: Overlay{Budget: DefaultOverlayBudget},
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

// Load reads a YAML or JSON config file over base (usually Default()):
// keys present in the file replace base's values. Unknown keys are errors.
// Errors name the file and never echo a secret.
func Load(path string, base Config) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return base, fmt.Errorf("config: %w", err)
	}
	cfg := base
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		return base, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Validate checks the configuration without touching the filesystem or the
// network.
func (c Config) Validate() error {
	var errs []error
	if c.Disk.Root == "" {
		errs = append(errs, errors.New("root: required (the disk tier's directory)"))
	}
	if c.Memory.MaxBlob > 0 && c.Memory.Size > 0 && c.Memory.MaxBlob > c.Memory.Size {
		errs = append(errs, fmt.Errorf("memory-max-blob %s exceeds memory %s", c.Memory.MaxBlob, c.Memory.Size))
	}
	if c.Remote.Endpoint == "" && (c.Remote.Instance != "" || len(c.Remote.Headers) > 0 || c.Remote.TLSCA != "" || c.Remote.TLSCert != "" || c.Remote.TLSKey != "") {
		errs = append(errs, errors.New("remote-*: set without remote (the endpoint)"))
	}
	return errors.Join(errs...)
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
