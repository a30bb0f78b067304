package strata

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
	"github.com/strata-oci/strata/internal/admin"
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

// ErrLocked means another process holds the disk root (it is
// disk.ErrLocked). blobctl then talks to that process over its admin socket.
var ErrLocked = disk.ErrLocked

// identityKeyName is the host's identity key under the disk root, made once
// when Config.IdentityKey is empty.
const identityKeyName = "identity.key"

// Host is an opened Strata host: the tier stack, the registry client, the
// credential resolver, the fetcher and both materializers, built from one
// Config. It holds the disk root (no other process can open it until Close)
// and, unless Config.NoAdmin is set, serves the admin endpoint on
// Root/admin.sock. A Host is safe for concurrent use.
type Host struct {
	cfg Config

	stack   *tiers.Stack
	creds   *credential.Resolver
	fetcher *fetcher.Fetcher
	overlay *overlay.Materializer
	ext4    *ext4.Converter
	admin   *admin.Local
	server  *admin.Server

	closeOnce sync.Once
	closeErr  error
}

// Open builds the host cfg describes and registers its metrics on
// cfg.Metrics. It fails with an error wrapping ErrLocked when another
// process holds cfg.Root, with one naming the config key at fault when cfg
// is invalid, and leaves nothing open on failure. Unless cfg.Inspect is
// set, it records cfg's budgets in the root (where the root cannot be
// written, cfg.Logger is told and the previous record stays).
func Open(ctx context.Context, cfg Config) (_ *Host, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("strata: %w", err)
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("strata: root: %w", err)
	}
	cfg.Root = root
	if cfg.Inspect {
		if err := checkInspectRoot(root); err != nil {
			return nil, fmt.Errorf("strata: %w", err)
		}
	}
	if cfg.OverlayRoot == "" {
		cfg.OverlayRoot = filepath.Join(root, "overlay")
	}
	if cfg.Ext4Dir == "" {
		cfg.Ext4Dir = filepath.Join(root, "ext4")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg := cfg.Metrics
	platform := manifest.Default()
	if cfg.Platform != "" {
		if platform, err = manifest.ParsePlatform(cfg.Platform); err != nil {
			return nil, fmt.Errorf("strata: platform: %w", err)
		}
	}
	h := &Host{cfg: cfg}
	parts := admin.Parts{Root: root, OverlayRoot: cfg.OverlayRoot, Ext4Dir: cfg.Ext4Dir, OverlayBudget: int64(cfg.OverlayBudget), Closer: h}
	if g, ok := reg.(prometheus.Gatherer); ok {
		parts.Gatherer = g
	}

	var entries []tiers.Entry
	defer func() {
		if err != nil {
			for _, e := range entries {
				_ = e.Tier.Close()
			}
			if h.server != nil {
				h.server.Close()
			}
		}
	}()
	if cfg.MemoryBudget > 0 {
		maxBlob := cfg.MemoryMaxBlob
		if maxBlob <= 0 {
			maxBlob = defaultMemoryMaxBlob
		}
		parts.Memory = memory.New(memory.Config{Name: admin.TierMemory, Budget: int64(cfg.MemoryBudget), MaxBlob: min(int64(maxBlob), int64(cfg.MemoryBudget)), Logger: log})
		// Trusted: the memory tier verified every blob as it was stored
		// and memory does not rot, so the stack does not hash its hits.
		entries = append(entries, tiers.Entry{Tier: parts.Memory, Trusted: true})
	}
	parts.Disk, err = disk.Open(disk.Config{Root: root, Name: admin.TierDisk, Budget: int64(cfg.DiskBudget), NoEvict: cfg.Inspect, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("strata: %w", err)
	}
	if err := registerDiskMetrics(reg, parts.Disk); err != nil {
		_ = parts.Disk.Close()
		return nil, fmt.Errorf("strata: metrics: %w", err)
	}
	entries = append(entries, tiers.Entry{Tier: parts.Disk})
	var remote *reapi.Tier
	if cfg.RemoteEndpoint != "" {
		remote, err = reapi.New(ctx, reapi.Config{
			Endpoint:     cfg.RemoteEndpoint,
			Logger:       log,
			Instance:     cfg.RemoteInstance,
			Headers:      cfg.RemoteHeaders,
			StallTimeout: time.Duration(cfg.RemoteStallTimeout),
			Parallel:     remoteParallel(cfg.RemoteReadStreams),
			TLS: reapi.TLSConfig{
				CAFile: cfg.RemoteTLSCA, CertFile: cfg.RemoteTLSCert, KeyFile: cfg.RemoteTLSKey,
				ServerName: cfg.RemoteTLSServerName,
			},
			Name: admin.TierRemote,
		})
		if err != nil {
			return nil, fmt.Errorf("strata: remote tier: %w", err)
		}
		entries = append(entries, tiers.Entry{Tier: remote, Shared: true})
	}
	metrics, err := tiers.NewMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("strata: metrics: %w", err)
	}
	h.stack = tiers.NewStack(tiers.StackConfig{Name: "strata", Tiers: entries, Metrics: metrics, Logger: log})
	parts.Stack = h.stack
	// From here on the stack owns the tiers.
	entries = nil
	defer func() {
		if err != nil {
			_ = h.stack.Close()
		}
	}()

	key := cfg.IdentityKey
	if key.IsZero() {
		if key, err = identityKey(filepath.Join(root, identityKeyName), cfg.Inspect); err != nil {
			return nil, fmt.Errorf("strata: identity key: %w", err)
		}
	}
	h.creds, err = credential.New(credential.Config{
		Registries:     cfg.Credentials,
		EnableKeychain: cfg.Keychain,
		IdentityKey:    key,
	})
	if err != nil {
		return nil, fmt.Errorf("strata: credentials: %w", err)
	}
	mirrors := map[string][]registry.Mirror{}
	for reg, ms := range cfg.Mirrors {
		for _, m := range ms {
			mirrors[reg] = append(mirrors[reg], registry.Mirror{Endpoint: m})
		}
	}
	// The registry metrics name the registries with mirrors or credentials
	// configured ("*.domain" patterns name none); the rest are "other".
	var metricHosts []string
	for r := range cfg.Credentials {
		if n, err := credential.NormalizeRegistry(r); err == nil {
			metricHosts = append(metricHosts, n)
		}
	}
	client, err := registry.New(registry.Config{Mirrors: mirrors, AllowCIDRs: cfg.AllowCIDRs, MaxBlob: cfg.registryMaxBlob(), Parallel: registry.ParallelConfig{Streams: cfg.RegistryReadStreams}, Metrics: reg, MetricHosts: metricHosts, UserAgent: "strata", Logger: log})
	if err != nil {
		return nil, fmt.Errorf("strata: registry: %w", err)
	}
	var leases fetcher.Leases
	if remote != nil && !cfg.RemoteNoLeases {
		leases = fetcher.Leases{Store: remote, SigningKey: key.Derive("fetch-leases")}
	}
	h.fetcher, err = fetcher.New(fetcher.Config{
		Store:           h.stack,
		Registry:        client,
		Credentials:     h.creds,
		Platform:        platform,
		TagTTL:          time.Duration(cfg.TagTTL),
		ProofTTL:        time.Duration(cfg.ProofTTL),
		AnonymousShared: cfg.RemoteAnonymousShared,
		SigningKey:      key.Derive("fetcher-refs"),
		Metrics:         reg,
		Logger:          log,
		Leases:          leases,
	})
	if err != nil {
		return nil, fmt.Errorf("strata: fetcher: %w", err)
	}
	parts.Fetcher = h.fetcher
	h.overlay, err = overlay.New(overlay.Config{Root: cfg.OverlayRoot, Budget: int64(cfg.OverlayBudget), UserXattr: cfg.OverlayUserXattr, NoEvict: cfg.Inspect, Metrics: reg, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("strata: overlay: %w", err)
	}
	parts.Overlay = h.overlay
	// Derivation refs are signed with a key derived from the identity key:
	// hosts that share derived images through a remote tier must share it.
	signingKey := key.Derive("ext4-derivation-refs")
	// Images of callers who may not use the shared tier (anonymous ones)
	// are converted and stored through the local tiers only: the converter
	// picks the store from the image (manifest.Image.LocalOnly).
	localStore := blob.Tier(h.stack)
	if remote != nil && !cfg.RemoteAnonymousShared {
		localStore = h.stack.Local()
	}
	h.ext4, err = ext4.New(ext4.Config{Store: h.stack, LocalStore: localStore, Stager: parts.Disk, WorkDir: cfg.Ext4Dir, FreeBytes: int64(cfg.Ext4Free), FreeInodes: cfg.Ext4FreeInodes, Budget: int64(cfg.Ext4Budget), SigningKey: signingKey, Metrics: reg, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("strata: ext4: %w", err)
	}
	parts.Ext4 = h.ext4
	h.admin = admin.New(parts)
	if reg != nil {
		if err := reg.Register(h.admin.UsageCollector()); err != nil {
			return nil, fmt.Errorf("strata: metrics: %w", err)
		}
	}
	if !cfg.Inspect {
		// Best effort: a root on a full filesystem still opens, keeping
		// the budgets it recorded before.
		b := admin.Budgets{Memory: cfg.MemoryBudget, Disk: cfg.DiskBudget, Overlay: cfg.OverlayBudget, Ext4: cfg.Ext4Budget}
		if err := admin.WriteBudgets(root, b); err != nil {
			log.Warn("strata: cannot record the budgets in the root; the previous record stays", "root", root, "err", err)
		}
	}
	if !cfg.NoAdmin {
		if h.server, err = admin.Serve(filepath.Join(root, admin.SocketName), h.admin); err != nil {
			return nil, fmt.Errorf("strata: admin endpoint: %w", err)
		}
	}
	return h, nil
}

// Config returns the configuration the host was opened with (paths made
// absolute, default directories filled in).
func (h *Host) Config() Config { return h.cfg }

// Fetcher returns the fetcher: FetchImage, IsImageCached, InvalidateCache.
func (h *Host) Fetcher() *fetcher.Fetcher { return h.fetcher }

// Credentials returns the credential resolver (identities, per-registry
// credentials).
func (h *Host) Credentials() *credential.Resolver { return h.creds }

// Overlay returns the overlay materializer.
func (h *Host) Overlay() *overlay.Materializer { return h.overlay }

// Ext4 returns the ext4 materializer. It stores what it derives from an
// anonymous caller's image through the local tiers only, and hands out an
// image made before only to callers whose image proves access to every
// layer (see ext4.Converter.Materialize).
func (h *Host) Ext4() *ext4.Converter { return h.ext4 }

// Admin returns the operator's operations on this host (list, stat, usage,
// evict, verify, gc, warm, metrics): what the admin endpoint serves and what
// blobctl runs when it holds the root itself. Its Close closes the host.
func (h *Host) Admin() *admin.Local { return h.admin }

// Close stops the admin endpoint (removing its socket), cancels the ext4
// conversions and overlay extractions in flight and waits for them to end
// (removing their temporary files), and closes the tiers, releasing the
// disk root. Later calls return the first call's result.
func (h *Host) Close() error {
	h.closeOnce.Do(func() {
		if h.server != nil {
			h.server.Close()
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

// identityKey reads the host's identity key, creating it unless inspect is
// set: an inspecting host without one uses a key of its own that it does
// not keep (it writes no refs that would need it later).
func identityKey(path string, inspect bool) (credential.SecretKey, error) {
	if !inspect {
		return loadOrCreateKey(path)
	}
	if _, err := os.Stat(path); err == nil {
		return loadOrCreateKey(path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return credential.SecretKey{}, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return credential.SecretKey{}, err
	}
	return credential.NewSecretKey(key), nil
}

// checkInspectRoot fails with an error wrapping admin.ErrNoRoot unless root
// is a directory holding a disk tier (its index or its blobs), so that
// inspecting a mistyped path neither creates a root there nor turns an
// unrelated directory into one.
func checkInspectRoot(root string) error {
	fi, err := os.Stat(root)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w at %s: it does not exist (inspection never creates one)", admin.ErrNoRoot, root)
	case err != nil:
		return fmt.Errorf("root %s: %w", root, err)
	case !fi.IsDir():
		return fmt.Errorf("%w at %s: it is not a directory", admin.ErrNoRoot, root)
	}
	for _, name := range []string{"index", "blobs"} {
		if fi, err := os.Stat(filepath.Join(root, name)); err == nil && fi.IsDir() {
			return nil
		}
	}
	return fmt.Errorf("%w at %s: the directory holds no disk tier (no index, no blobs; inspection never creates one)", admin.ErrNoRoot, root)
}

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

// remoteParallel is the remote tier's parallel-read setting for
// Config.RemoteReadStreams: one stream per blob unless more are asked
// for. Measured with the harness (fetch-reapi-hit, SDK fake over gRPC on
// loopback, 2 cores, 2 x 2 alternating runs of 5): 0.94/0.70 s with one
// stream vs 1.13/1.08 s with four parts at once; the parts' read-ahead
// buffers cost a copy each, which only a link that bounds one stream
// repays.
func remoteParallel(streams int) reapi.ParallelConfig {
	if streams <= 1 {
		return reapi.ParallelConfig{Threshold: -1}
	}
	return reapi.ParallelConfig{Streams: streams}
}
