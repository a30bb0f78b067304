package host

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
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
	admin   *adminServer

	closeOnce     sync.Once
	closeErr      error
	forgottenOnce sync.Once // see takeForgotten
}

// Open builds the host described by cfg and registers its metrics on reg
// (nil: none are registered; if reg is also a prometheus.Gatherer the admin
// endpoint serves it at /metrics). It fails with an error wrapping ErrLocked
// when another process holds cfg's disk root; use Dial then. Nothing is left
// open on failure. Unless cfg.Inspect is set, it records cfg's budgets in
// the root (see StoredBudgets; where the root cannot be written, a warning
// is logged and the previous record stays).
func Open(ctx context.Context, cfg Config, reg prometheus.Registerer) (_ *Host, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("host: %w", err)
	}
	root, err := filepath.Abs(cfg.Disk.Root)
	if err != nil {
		return nil, fmt.Errorf("host: root: %w", err)
	}
	cfg.Disk.Root = root
	if cfg.Inspect {
		if err := checkInspectRoot(root); err != nil {
			return nil, fmt.Errorf("host: %w", err)
		}
	}
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
		// Trusted: the memory tier verified every blob as it was stored
		// and memory does not rot, so the stack does not hash its hits.
		entries = append(entries, tiers.Entry{Tier: h.memory, Trusted: true})
	}
	h.disk, err = disk.Open(disk.Config{Root: root, Name: TierDisk, Budget: int64(cfg.Disk.Budget), NoEvict: cfg.Inspect, Logger: tierLogger()})
	if err != nil {
		return nil, fmt.Errorf("host: %w", err)
	}
	if err := registerDiskMetrics(reg, h.disk); err != nil {
		_ = h.disk.Close()
		return nil, fmt.Errorf("host: metrics: %w", err)
	}
	entries = append(entries, tiers.Entry{Tier: h.disk})
	if cfg.Remote.Endpoint != "" {
		h.remote, err = reapi.New(ctx, reapi.Config{
			Endpoint:     cfg.Remote.Endpoint,
			Instance:     cfg.Remote.Instance,
			Headers:      cfg.Remote.Headers,
			StallTimeout: time.Duration(cfg.Remote.StallTimeout),
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
	h.stack = tiers.NewStack(tiers.StackConfig{Name: "strata", Tiers: entries, Metrics: metrics, Logger: tierLogger()})
	// From here on the stack owns the tiers.
	entries = nil
	defer func() {
		if err != nil {
			_ = h.stack.Close()
		}
	}()

	key := cfg.Registry.IdentityKey
	if key.IsZero() {
		if key, err = identityKey(filepath.Join(root, IdentityKeyName), cfg.Inspect); err != nil {
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
	// The registry metrics name the registries with mirrors or credentials
	// configured ("*.domain" patterns name none); the rest are "other".
	var metricHosts []string
	for r := range cfg.Registry.Credentials {
		if n, err := credential.NormalizeRegistry(r); err == nil {
			metricHosts = append(metricHosts, n)
		}
	}
	h.reg, err = registry.New(registry.Config{Mirrors: mirrors, AllowCIDRs: cfg.Registry.AllowCIDRs, MaxBlobSize: cfg.Registry.maxBlobSize(), Metrics: reg, MetricHosts: metricHosts, UserAgent: "strata"})
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
	h.overlay, err = overlay.New(overlay.Config{Root: cfg.Overlay.Root, Budget: int64(cfg.Overlay.Budget), UserXattr: cfg.Overlay.UserXattr, NoEvict: cfg.Inspect, Metrics: reg})
	if err != nil {
		return nil, fmt.Errorf("host: overlay: %w", err)
	}
	// Derivation refs are signed with a key derived from the identity key:
	// hosts that share derived images through a remote tier must share it.
	signingKey := key.Derive("ext4-derivation-refs")
	// Images of callers who may not use the shared tier (anonymous ones)
	// are converted and stored through the local tiers only: the converter
	// picks the store from the image (manifest.Image.LocalOnly).
	localStore := blob.Tier(h.stack)
	if h.remote != nil && !cfg.Remote.AnonymousShared {
		localStore = h.stack.Local()
	}
	h.ext4, err = ext4.New(ext4.Config{Store: h.stack, LocalStore: localStore, WorkDir: cfg.Ext4.WorkDir, FreeBytes: int64(cfg.Ext4.FreeBytes), FreeInodes: cfg.Ext4.FreeInodes, Budget: int64(cfg.Ext4.Budget), SigningKey: signingKey, Registerer: reg})
	if err != nil {
		return nil, fmt.Errorf("host: ext4: %w", err)
	}
	if reg != nil {
		if err := reg.Register(usageCollector{h: h}); err != nil {
			return nil, fmt.Errorf("host: metrics: %w", err)
		}
	}
	if !cfg.Inspect {
		// Best effort: a root on a full filesystem still opens, keeping
		// the budgets it recorded before.
		if err := writeBudgets(root, budgetsOf(cfg)); err != nil {
			slog.Warn("strata host: cannot record the budgets in the root", "root", root, "err", err)
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

// Ext4 returns the ext4 materializer. It stores what it derives from an
// anonymous caller's image through the local tiers only, and hands out an
// image made before only to callers whose image proves access to every
// layer (see ext4.Converter.Materialize).
func (h *Host) Ext4() *ext4.Converter { return h.ext4 }

// Platform returns the platform the fetcher selects.
func (h *Host) Platform() manifest.Platform { return h.platform }

// Close stops the admin endpoint (removing its socket), cancels the ext4
// conversions and overlay extractions in flight and waits for them to end
// (removing their temporary files), and closes the tiers, releasing the
// disk root. Later calls return the first call's result.
func (h *Host) Close() error {
	h.closeOnce.Do(func() {
		if h.admin != nil {
			h.admin.close()
		}
		// Conversions and extractions run on contexts of their own: stop
		// them and wait until their temporary files are gone.
		_ = h.ext4.Close()
		_ = h.overlay.Close()
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
	// (err, not a new one: a short write on a full disk must not link an
	// empty key into place.)
	if _, err = tmp.Write(key); err == nil {
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

// tierLogger is the tiers' logger: warnings and errors (a rebuilt index,
// a full filesystem, failed evictions, bad copies skipped and repaired)
// through slog's default logger; routine reports are left out.
func tierLogger() *slog.Logger {
	return slog.New(minLevel{slog.Default().Handler(), slog.LevelWarn})
}

// minLevel drops records below min.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}
func (h minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(a), h.min}
}
func (h minLevel) WithGroup(n string) slog.Handler { return minLevel{h.Handler.WithGroup(n), h.min} }

// registerDiskMetrics registers the disk tier's index health on reg (nil:
// nothing).
func registerDiskMetrics(reg prometheus.Registerer, d *disk.Tier) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "strata_disk_index_rebuilds_total",
			Help: "Times the disk tier found its index damaged or missing and rebuilt it from the blob files (refs in it were lost).",
		}, func() float64 { return float64(d.IndexRebuilds()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "strata_disk_index_read_only",
			Help: "1 while the disk tier's index is not written to disk because the filesystem is full (nothing new is stored).",
		}, func() float64 {
			if d.IndexReadOnly() {
				return 1
			}
			return 0
		}),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
