package host

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/ext4"
	"github.com/strata-oci/strata/materialize/overlay"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/registry/credential"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/disk"
	"github.com/strata-oci/strata/tiers/memory"
	"github.com/strata-oci/strata/tiers/reapi"
)

// ErrLocked means another process holds the disk root. It is disk.ErrLocked:
// talk to that process with Dial instead.
var ErrLocked = disk.ErrLocked

// Names of the host's tiers, as they appear in blob.Info.Tier, metrics and
// blobctl's --tier flag.
const (
	TierMemory = "memory"
	TierDisk   = "disk"
	TierRemote = "remote"
)

// Files under the disk root that belong to the host.
const (
	AdminSocketName = "admin.sock"
	IdentityKeyName = "identity.key"
)

// Host is an opened Strata host: the tier stack, the registry client, the
// credential resolver, the fetcher and both materializers, built from one
// Config. It holds the disk root (no other process can open it until Close)
// and, unless Config.NoAdmin is set, serves the admin endpoint on
// Root/admin.sock. A Host is safe for concurrent use.
type Host struct {
	cfg      Config
	platform manifest.Platform
	gatherer prometheus.Gatherer

	stack   *tiers.Stack
	memory  *memory.Tier
	disk    *disk.Tier
	remote  *reapi.Tier
	reg     *registry.Client
	creds   *credential.Resolver
	fetcher *fetcher.Fetcher
	overlay *overlay.Materializer
	ext4    *ext4.Converter
	ext4Loc *ext4.Converter // over the stack's local tiers, for LocalOnly images
	admin   *adminServer

	closeOnce sync.Once
	closeErr  error
}

// Open builds the host described by cfg and registers its metrics on reg
// (nil: none are registered; if reg is also a prometheus.Gatherer the admin
// endpoint serves it at /metrics). It fails with an error wrapping ErrLocked
// when another process holds cfg's disk root; use Dial then. Nothing is left
// open on failure.
func Open(ctx context.Context, cfg Config, reg prometheus.Registerer) (_ *Host, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("host: %w", err)
	}
	root, err := filepath.Abs(cfg.Disk.Root)
	if err != nil {
		return nil, fmt.Errorf("host: root: %w", err)
	}
	cfg.Disk.Root = root
	if cfg.Overlay.Root == "" {
		cfg.Overlay.Root = filepath.Join(root, "overlay")
	}
	if cfg.Ext4.WorkDir == "" {
		cfg.Ext4.WorkDir = filepath.Join(root, "ext4")
	}
	h := &Host{cfg: cfg}
	if g, ok := reg.(prometheus.Gatherer); ok {
		h.gatherer = g
	}
	h.platform = manifest.Default()
	if cfg.Fetch.Platform != "" {
		if h.platform, err = manifest.ParsePlatform(cfg.Fetch.Platform); err != nil {
			return nil, fmt.Errorf("host: platform: %w", err)
		}
	}

	var entries []tiers.Entry
	defer func() {
		if err != nil {
			for _, e := range entries {
				_ = e.Tier.Close()
			}
			if h.admin != nil {
				h.admin.close()
			}
		}
	}()
	if cfg.Memory.Size > 0 {
		h.memory = memory.New(memory.Config{Name: TierMemory, MaxBytes: int64(cfg.Memory.Size), MaxBlobBytes: min(int64(cfg.Memory.MaxBlob), int64(cfg.Memory.Size))})
		entries = append(entries, tiers.Entry{Tier: h.memory})
	}
	h.disk, err = disk.Open(disk.Config{Root: root, Name: TierDisk, Budget: int64(cfg.Disk.Budget)})
	if err != nil {
		return nil, fmt.Errorf("host: %w", err)
	}
	entries = append(entries, tiers.Entry{Tier: h.disk})
	if cfg.Remote.Endpoint != "" {
		h.remote, err = reapi.New(ctx, reapi.Config{
			Endpoint: cfg.Remote.Endpoint,
			Instance: cfg.Remote.Instance,
			Headers:  cfg.Remote.Headers,
			TLS: reapi.TLSConfig{
				CAFile: cfg.Remote.TLSCA, CertFile: cfg.Remote.TLSCert, KeyFile: cfg.Remote.TLSKey,
				ServerName: cfg.Remote.TLSServerName,
			},
			Name: TierRemote,
		})
		if err != nil {
			return nil, fmt.Errorf("host: remote tier: %w", err)
		}
		entries = append(entries, tiers.Entry{Tier: h.remote, Shared: true})
	}
	metrics, err := tiers.NewMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("host: metrics: %w", err)
	}
	h.stack = tiers.NewStack(tiers.StackConfig{Name: "strata", Tiers: entries, Metrics: metrics})
	// From here on the stack owns the tiers.
	entries = nil
	defer func() {
		if err != nil {
			_ = h.stack.Close()
		}
	}()

	key := cfg.Registry.IdentityKey
	if key.IsZero() {
		if key, err = loadOrCreateKey(filepath.Join(root, IdentityKeyName)); err != nil {
			return nil, fmt.Errorf("host: identity key: %w", err)
		}
	}
	h.creds, err = credential.New(credential.Config{
		Registries:     cfg.Registry.Credentials,
		EnableKeychain: cfg.Registry.Keychain,
		IdentityKey:    key,
	})
	if err != nil {
		return nil, fmt.Errorf("host: credentials: %w", err)
	}
	mirrors := map[string][]registry.Mirror{}
	for reg, ms := range cfg.Registry.Mirrors {
		for _, m := range ms {
			mirrors[reg] = append(mirrors[reg], registry.Mirror{Endpoint: m})
		}
	}
	h.reg, err = registry.New(registry.Config{Mirrors: mirrors, AllowCIDRs: cfg.Registry.AllowCIDRs, Metrics: reg, UserAgent: "strata"})
	if err != nil {
		return nil, fmt.Errorf("host: registry: %w", err)
	}
	h.fetcher, err = fetcher.New(fetcher.Config{
		Store:           h.stack,
		Registry:        h.reg,
		Credentials:     h.creds,
		Platform:        h.platform,
		TagTTL:          time.Duration(cfg.Fetch.TagTTL),
		ProofTTL:        time.Duration(cfg.Fetch.ProofTTL),
		AnonymousShared: cfg.Remote.AnonymousShared,
		RefKey:          key.Derive("fetcher-refs"),
		Metrics:         reg,
	})
	if err != nil {
		return nil, fmt.Errorf("host: fetcher: %w", err)
	}
	h.overlay, err = overlay.New(overlay.Config{Root: cfg.Overlay.Root, Budget: int64(cfg.Overlay.Budget), UserXattr: cfg.Overlay.UserXattr, Metrics: reg})
	if err != nil {
		return nil, fmt.Errorf("host: overlay: %w", err)
	}
	// Derivation refs are signed with a key derived from the identity key:
	// hosts that share derived images through a remote tier must share it.
	signingKey := key.Derive("ext4-derivation-refs")
	// The ext4 metrics carry store="stack" or store="local" (see below).
	h.ext4, err = ext4.New(ext4.Config{Store: h.stack, WorkDir: cfg.Ext4.WorkDir, FreeBytes: int64(cfg.Ext4.FreeBytes), FreeInodes: cfg.Ext4.FreeInodes, SigningKey: signingKey, Registerer: storeLabel(reg, "stack")})
	if err != nil {
		return nil, fmt.Errorf("host: ext4: %w", err)
	}
	// Images of callers who may not use the shared tier (anonymous ones)
	// are converted and stored through the local tiers only.
	h.ext4Loc = h.ext4
	if h.remote != nil && !cfg.Remote.AnonymousShared {
		h.ext4Loc, err = ext4.New(ext4.Config{Store: h.stack.Local(), WorkDir: cfg.Ext4.WorkDir, FreeBytes: int64(cfg.Ext4.FreeBytes), FreeInodes: cfg.Ext4.FreeInodes, SigningKey: signingKey, Registerer: storeLabel(reg, "local")})
		if err != nil {
			return nil, fmt.Errorf("host: ext4 (local): %w", err)
		}
	}
	if !cfg.NoAdmin {
		if h.admin, err = serveAdmin(filepath.Join(root, AdminSocketName), h); err != nil {
			return nil, fmt.Errorf("host: admin endpoint: %w", err)
		}
	}
	return h, nil
}

// Config returns the configuration the host was opened with (paths made
// absolute, defaults filled in).
func (h *Host) Config() Config { return h.cfg }

// Root returns the disk root the host holds.
func (h *Host) Root() string { return h.cfg.Disk.Root }

// Stack returns the tier stack (memory, disk, then the shared remote tier).
func (h *Host) Stack() *tiers.Stack { return h.stack }

// Fetcher returns the fetcher.
func (h *Host) Fetcher() *fetcher.Fetcher { return h.fetcher }

// Credentials returns the credential resolver.
func (h *Host) Credentials() *credential.Resolver { return h.creds }

// Overlay returns the overlay materializer.
func (h *Host) Overlay() *overlay.Materializer { return h.overlay }

// Ext4 returns the ext4 materializer.
func (h *Host) Ext4() *ext4.Converter { return h.ext4 }

// Ext4For returns the ext4 converter for img: the one over the local tiers
// when img's caller may not use the shared tier (fetcher.Image.LocalOnly),
// so that nothing derived for an anonymous caller is written to it.
func (h *Host) Ext4For(img *fetcher.Image) *ext4.Converter {
	if img.LocalOnly {
		return h.ext4Loc
	}
	return h.ext4
}

// Platform returns the platform the fetcher selects.
func (h *Host) Platform() manifest.Platform { return h.platform }

// Close stops the admin endpoint (removing its socket) and closes the tiers,
// releasing the disk root. Later calls return the first call's result.
func (h *Host) Close() error {
	h.closeOnce.Do(func() {
		if h.admin != nil {
			h.admin.close()
		}
		h.closeErr = h.stack.Close()
	})
	return h.closeErr
}

// loadOrCreateKey reads the host's identity key, creating 32 random bytes
// (mode 0600) the first time. Concurrent creators agree on one key.
func loadOrCreateKey(path string) (credential.SecretKey, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if len(b) < 16 {
			return credential.SecretKey{}, fmt.Errorf("%s: too short (%d bytes); remove it to make a new one", path, len(b))
		}
		return credential.NewSecretKey(b), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return credential.SecretKey{}, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return credential.SecretKey{}, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".identity-*")
	if err != nil {
		return credential.SecretKey{}, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(key); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return credential.SecretKey{}, err
	}
	// Link, not rename: if another process created the key first, keep its.
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return credential.SecretKey{}, err
	}
	return loadOrCreateKey(path)
}

// tierByName returns the stack's tier of that name.
func (h *Host) tierByName(name string) (tiers.Entry, error) {
	for _, e := range h.stack.Tiers() {
		if e.Tier.Name() == name {
			return e, nil
		}
	}
	return tiers.Entry{}, fmt.Errorf("%w: no tier %q (have %s)", ErrInvalidRequest, name, h.tierNames())
}

func (h *Host) tierNames() string {
	s := ""
	for i, e := range h.stack.Tiers() {
		if i > 0 {
			s += ", "
		}
		s += e.Tier.Name()
	}
	return s
}

var _ blob.Tier = (*tiers.Stack)(nil)

// storeLabel labels every metric registered through reg with store=name.
func storeLabel(reg prometheus.Registerer, name string) prometheus.Registerer {
	if reg == nil {
		return nil
	}
	return prometheus.WrapRegistererWith(prometheus.Labels{"store": name}, reg)
}
