package ext4

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Microsoft/hcsshim/ext4/tar2ext4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/bootid"
	"github.com/strata-oci/strata/internal/flight"
	"github.com/strata-oci/strata/internal/privdir"
	"github.com/strata-oci/strata/internal/safego"
	"github.com/strata-oci/strata/internal/sparse"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/internal/layerio"
)

// ErrLayerTooLarge is wrapped when a layer decompresses to more than
// Config.MaxLayerBytes.
var ErrLayerTooLarge = layerio.ErrLimitExceeded

// ErrTooManyLayers is wrapped when an image has more than Config.MaxLayers
// layers. It wraps ErrLayerTooLarge (layerio.ErrLimitExceeded).
var ErrTooManyLayers = fmt.Errorf("too many layers: %w", layerio.ErrLimitExceeded)

// Defaults of the image-wide limits (see Config.MaxLayers).
const (
	DefaultMaxLayers  = 500
	DefaultMaxEntries = 10_000_000
)

const (
	// Version names the materializer's output format. It is part of every
	// derivation key: bump it whenever the bytes produced for the same image
	// and options change, so old derived blobs are no longer used.
	Version = "strata-ext4/1"
	// Format is the derivation's format name in ref keys.
	Format = "ext4"
	// MediaType is the media type of the derived blob's ref.
	MediaType = "application/vnd.strata.ext4"

	// DefaultMaxDiskSize is Config.MaxDiskSize when zero.
	DefaultMaxDiskSize = 64 << 30
	// DefaultMaxLayerBytes is Config.MaxLayerBytes when zero.
	DefaultMaxLayerBytes = layerio.DefaultMaxBytes
)

// Config configures a Converter.
type Config struct {
	// Store is the tier (usually a tiers.Stack) that holds derived images
	// and their refs. Required.
	Store blob.Tier
	// LocalStore holds what is derived from images whose caller may not use
	// a shared tier (manifest.Image.LocalOnly: anonymous callers), usually
	// the stack's Local view; nil means Store. The converter picks the store
	// from the image, so no caller can pick the wrong one.
	LocalStore blob.Tier
	// Stager, if set, is the local disk tier among the tiers of Store and
	// LocalStore (tiers/disk.Tier). A conversion then writes the image
	// straight into a staging file of it, which the Stager commits as the
	// derived blob; the image handed out is a hard link of that committed
	// file (read-only, 0400) when WorkDir is on the same file system and
	// the options add no free space, so the image is written once. The
	// derivation ref goes to the Stager at once; Store (or LocalStore)
	// receives blob and ref in the background, after Materialize returned
	// (see Flush). nil: the image is written in WorkDir/tmp and stored
	// through Store before Materialize returns.
	Stager Stager
	// WorkDir holds the images handed out (WorkDir/images), temporary files
	// of conversions in progress and spooled content (WorkDir/tmp).
	// Required; created if missing. New makes it, images/ and tmp/ 0700
	// and refuses them if another user owns them (images are private). New
	// removes files older than a day from WorkDir/tmp (left by a crash).
	// Several processes of one user may share it.
	WorkDir string
	// FreeBytes and FreeInodes are the default free space an image gets
	// beyond its content, for Materialize calls with nil Options.
	FreeBytes  int64
	FreeInodes int64
	// MaxDiskSize bounds an image, content plus free space (default 64 GiB,
	// at most 16 TiB). It also decides how many blocks are reserved for
	// group descriptors (4 per 64 GiB).
	MaxDiskSize int64
	// MaxLayerBytes bounds the uncompressed size of one layer (default
	// 64 GiB): a decompression bomb fails with ErrLayerTooLarge.
	MaxLayerBytes int64
	// MaxLayers bounds the layers of an image (0: DefaultMaxLayers, as
	// overlayfs stacks at most 500; negative: no bound): more fail with
	// ErrTooManyLayers. MaxEntries bounds the tar entries of all layers
	// together (0: DefaultMaxEntries; negative: no bound), MaxImageBytes
	// the bytes of file content of all layers together, shadowed content
	// included (0: twice MaxDiskSize; negative: no bound); exceeding
	// either fails with an error wrapping layerio.ErrBudgetExceeded (and
	// ErrLayerTooLarge).
	MaxLayers     int
	MaxEntries    int64
	MaxImageBytes int64
	// Budget bounds the disk space (holes excluded) of the images in
	// WorkDir/images: after each Materialize the least recently used ones
	// are removed until the rest fit (see ApplyBudget). 0 means no bound.
	Budget int64
	// Scope is the ref scope of derivation refs ("" = global). Materialize
	// needs an Image, which the fetcher hands out only to callers that
	// proved access to it, so a global scope shares conversion work
	// without widening access.
	Scope string
	// SigningKey authenticates derivation refs. A ref is followed only if
	// its signature (an HMAC-SHA256 under this key over the ref key, the
	// image digest and size, carried in the ref's media type) verifies, so
	// whoever can write refs into a shared tier (a remote action cache)
	// cannot point an image at a filesystem of their choosing. Executors
	// that share derived images must share this key. Empty: New draws a
	// random key, and refs are trusted by this Converter only.
	SigningKey []byte
	// Metrics, if set, receives the converter's metrics.
	Metrics prometheus.Registerer
	// Logger receives what an operator would want to know: a shared or
	// local derived image that could not be used (missing, corrupt, of
	// another layout) and was converted again, and leftovers of killed
	// conversions removed at New. nil: nothing is logged.
	Logger *slog.Logger
}

// Options shape the local image file. They do not change the stored
// derived blob (the image without free space), so one blob serves every
// Options; they are part of the local file's identity only.
type Options struct {
	// FreeBytes is the free space the filesystem has at least, beyond its
	// content (rounded up to 4 KiB blocks).
	FreeBytes int64
	// FreeInodes is the number of free inodes it has at least.
	FreeInodes int64
}

// Result is a materialized image.
type Result struct {
	// Path is a read-only ext4 image file, ready to attach. It stays valid
	// until Cleanup for the same image and options. The caller must not
	// write to it nor change its mode: with Config.Stager it may be a hard
	// link of the local tier's copy of the derived blob. Use CopyOut for a
	// file of one's own, or copy-on-write (reflink, overlay, a Firecracker
	// read-only drive plus a writable one).
	Path string
	// Size is the size of the file at Path in bytes (holes included).
	Size int64
	// Digest names the stored image, under which the Store holds it: the
	// filesystem without the requested free space. The file at Path is that
	// image grown in place by Options (identical bytes when both are zero).
	// It is empty while the image is being hashed: with Config.Stager a
	// conversion hands its image out first and hashes it in the background
	// (see Hashed).
	Digest blob.Digest
	// FromCache is true when no conversion ran for this call: the image
	// was already on local disk or was downloaded from the Store.
	FromCache bool

	pending *pendingImage // the background hash Digest waits for, if empty
}

// Hashed returns the digest of the stored image: Digest, or, when Digest
// is empty (the image was handed out before it was hashed), the digest
// once the background hash has ended, or ctx. It fails if that hash
// failed: the image at Path is still usable, but it is not stored, and
// the next Materialize converts it again.
func (r *Result) Hashed(ctx context.Context) (blob.Digest, error) {
	if r.Digest != "" {
		return r.Digest, nil
	}
	if r.pending == nil {
		return "", errors.New("ext4: result without a digest")
	}
	select {
	case <-r.pending.done:
		return r.pending.digest, r.pending.err
	case <-ctx.Done():
		return "", fmt.Errorf("ext4: wait for the image's hash: %w", ctx.Err())
	}
}

// Stats counts the converter's work since New.
type Stats struct {
	Conversions        int64 // conversions started
	ConversionFailures int64 // conversions that failed
	Downloads          int64 // images taken from the Store instead of converting
	LocalHits          int64 // calls answered from WorkDir
	Collapsed          int64 // calls whose work was shared with identical concurrent calls (leader included)
	// Background stores of converted images into the Store (with
	// Config.Stager) that ended, and those of them that failed.
	BackgroundStores        int64
	BackgroundStoreFailures int64
}

// Converter turns images into ext4 filesystem images stored as derived
// blobs. It is safe for concurrent use; identical concurrent requests
// collapse into one conversion.
type Converter struct {
	cfg    Config
	imgDir string
	tmpDir string
	// flights collapse identical concurrent calls (see Materialize). They
	// linger: work runs to its end even when every caller left, so that
	// the next call finds it done (the image in WorkDir).
	flights flight.Group[*Result]
	failed  layerio.Failures // layers whose content failed a limit or was invalid

	// Flights run on contexts of their own (a caller giving up does not
	// stop work others wait for); base ends them all on Close, running
	// counts them.
	base   context.Context
	stop   context.CancelFunc
	mu     sync.Mutex
	closed bool
	// metaMu orders publishing local images with markSynced.
	metaMu  sync.Mutex
	running sync.WaitGroup
	work    workState // WorkDir's lock, work in flight (see RemoveStale)
	// storing holds the background stores running (see storeLater), by
	// derivation key; each channel is closed when its store ends.
	storing map[string]chan struct{}
	// pending holds the local images handed out before they were hashed
	// (see convertStaged), by derivation id.
	pending map[string]*pendingImage

	conversions, failures, downloads, localHits, collapsed atomic.Int64
	stores, storeFailures                                  atomic.Int64

	mOutcome  *prometheus.CounterVec
	mDuration *prometheus.HistogramVec
	mBytes    prometheus.Counter
}

// New returns a Converter. It fails if Store or WorkDir is missing, if the
// work directories cannot be created or belong to another user, or if the
// metrics cannot be registered.
func New(cfg Config) (*Converter, error) {
	if cfg.Store == nil {
		return nil, errors.New("ext4: Config.Store is required")
	}
	if cfg.WorkDir == "" {
		return nil, errors.New("ext4: Config.WorkDir is required")
	}
	if cfg.LocalStore == nil {
		cfg.LocalStore = cfg.Store
	}
	if cfg.FreeBytes < 0 || cfg.FreeInodes < 0 || cfg.MaxDiskSize < 0 || cfg.MaxLayerBytes < 0 {
		return nil, errors.New("ext4: negative size in Config")
	}
	if cfg.MaxDiskSize == 0 {
		cfg.MaxDiskSize = DefaultMaxDiskSize
	}
	cfg.MaxDiskSize = min(cfg.MaxDiskSize, 16<<40)
	if cfg.MaxLayerBytes == 0 {
		cfg.MaxLayerBytes = DefaultMaxLayerBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.SigningKey) == 0 {
		cfg.SigningKey = make([]byte, 32)
		if _, err := rand.Read(cfg.SigningKey); err != nil {
			return nil, fmt.Errorf("ext4: signing key: %w", err)
		}
	}
	c := &Converter{
		cfg:     cfg,
		imgDir:  filepath.Join(cfg.WorkDir, "images"),
		tmpDir:  filepath.Join(cfg.WorkDir, "tmp"),
		flights: flight.Group[*Result]{Linger: true},
	}
	c.base, c.stop = context.WithCancel(context.Background())
	// The images are whole filesystems of images their callers may have had
	// to prove access to: WorkDir, images/ and tmp/ are this user's only.
	if err := privdir.Ensure(cfg.WorkDir, true, true); err != nil {
		return nil, fmt.Errorf("ext4: WorkDir: %w (ext4 images are kept only in a directory of this user's own)", err)
	}
	for _, d := range []string{c.imgDir, c.tmpDir} {
		if err := privdir.Ensure(d, false, false); err != nil {
			return nil, fmt.Errorf("ext4: %w", err)
		}
	}
	if n := removeStale(c.tmpDir, staleAfter); n > 0 {
		cfg.Logger.Info("ext4: removed leftovers of conversions killed over a day ago", "dir", c.tmpDir, "files", n)
	}
	c.work.lockWorkDir(cfg.WorkDir)
	c.mOutcome = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "strata_ext4_materialize_total",
		Help: "ext4 materializations by outcome (converted, downloaded, local, failed).",
	}, []string{"outcome"})
	c.mDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "strata_ext4_materialize_seconds",
		Help:    "Latency of ext4 materializations that did work, by outcome.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
	}, []string{"outcome"})
	c.mBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "strata_ext4_converted_bytes_total",
		Help: "Bytes of ext4 images produced by conversions.",
	})
	if cfg.Metrics != nil {
		for _, m := range []prometheus.Collector{c.mOutcome, c.mDuration, c.mBytes} {
			if err := cfg.Metrics.Register(m); err != nil {
				return nil, fmt.Errorf("ext4: register metrics: %w", err)
			}
		}
	}
	return c, nil
}

// Stats returns the converter's counters.
func (c *Converter) Stats() Stats {
	return Stats{
		Conversions:        c.conversions.Load(),
		ConversionFailures: c.failures.Load(),
		Downloads:          c.downloads.Load(),
		LocalHits:          c.localHits.Load(),
		Collapsed:          c.collapsed.Load(),

		BackgroundStores:        c.stores.Load(),
		BackgroundStoreFailures: c.storeFailures.Load(),
	}
}

// derivation is one (image, options) pair's identity.
type derivation struct {
	store  blob.Tier // Store or LocalStore, by the image's LocalOnly
	flight string    // id of the collapsed work: see Materialize
	key    blob.RefKey
	id     string // hex sha256 of key.String(): local file names
	free   growSpec
	digest blob.Digest
}

func (c *Converter) derive(img manifest.Image, opts *Options) (derivation, error) {
	o := Options{FreeBytes: c.cfg.FreeBytes, FreeInodes: c.cfg.FreeInodes}
	if opts != nil {
		o = *opts
	}
	if o.FreeBytes < 0 || o.FreeInodes < 0 {
		return derivation{}, fmt.Errorf("ext4: negative free space in Options")
	}
	if o.FreeBytes > c.cfg.MaxDiskSize {
		return derivation{}, fmt.Errorf("ext4: FreeBytes %d exceeds MaxDiskSize %d", o.FreeBytes, c.cfg.MaxDiskSize)
	}
	d := img.Digest()
	if err := blob.ValidateDigest(d); err != nil {
		return derivation{}, fmt.Errorf("ext4: image digest: %w", err)
	}
	freeBlocks := (o.FreeBytes + fsBlockSize - 1) / fsBlockSize
	// Canonical options of the stored image: everything that changes its
	// bytes, in one order. Free space is added to local copies only, so it
	// is not part of the stored image (nor of the ref key).
	canon := fmt.Sprintf("max-disk=%d", c.cfg.MaxDiskSize)
	key := blob.DerivedKey(c.cfg.Scope, d, Format, canon, Version)
	if err := key.Validate(); err != nil {
		return derivation{}, err
	}
	local := fmt.Sprintf("%s|free-blocks=%d,free-inodes=%d", key.String(), freeBlocks, o.FreeInodes)
	sum := sha256.Sum256([]byte(local))
	store := c.cfg.Store
	if img.LocalOnly() {
		store = c.cfg.LocalStore
	}
	return derivation{
		store:  store,
		flight: fmt.Sprintf("%x|%t|%s", sum, img.LocalOnly(), img.Origin()),
		key:    key,
		id:     hex.EncodeToString(sum[:]),
		digest: d,
		free: growSpec{
			FreeBlocks: uint64(freeBlocks),
			FreeInodes: uint64(o.FreeInodes),
			GDTBlocks:  gdtBlocks(c.cfg.MaxDiskSize),
			MaxBytes:   c.cfg.MaxDiskSize,
		},
	}, nil
}

// gdtBlocks is the number of descriptor blocks hcsshim's writer reserves
// for MaximumDiskSize(max).
func gdtBlocks(max int64) uint32 {
	const bpg = fsBlockSize * 8
	maxBlocks := (max-1)/fsBlockSize + 1
	maxGroups := (maxBlocks-1)/bpg + 1
	return uint32((maxGroups-1)/(fsBlockSize/gdSize) + 1)
}

// localMeta is the sidecar written next to a local image.
type localMeta struct {
	// Digest is empty while the image is hashed in the background (see
	// convertStaged): only the process hashing it reuses it meanwhile.
	Digest blob.Digest `json:"digest"`
	Size   int64       `json:"size"`
	Key    string      `json:"key"`
	// Unsynced is the boot id of the machine that published the image
	// before it was on disk (a conversion hands out its image while the
	// fsync runs in the background); cleared once it is. A local image
	// is not hashed when it is reused, so one published unsynced is
	// reused only on the boot that wrote it: after a machine crash it may
	// be torn, and the image is taken from the Store (hashed) again.
	Unsynced string `json:"unsynced,omitempty"`
}

// bootID returns the kernel's boot id ("" when unreadable: an unsynced
// image is then never reused). Tests replace it.
var bootID = bootid.Read

// syncImage makes f durable. Tests replace it.
var syncImage = (*os.File).Sync

func (c *Converter) imagePath(dv derivation) string { return filepath.Join(c.imgDir, dv.id+".ext4") }
func (c *Converter) metaPath(dv derivation) string  { return filepath.Join(c.imgDir, dv.id+".json") }

// local returns the image already in WorkDir, if any.
func (c *Converter) local(dv derivation) (*Result, bool) {
	// Before the sidecar: finishPending writes the digest into the sidecar
	// before it forgets the image.
	c.mu.Lock()
	pending := c.pending[dv.id]
	c.mu.Unlock()
	b, err := os.ReadFile(c.metaPath(dv))
	if err != nil {
		return nil, false
	}
	var m localMeta
	if json.Unmarshal(b, &m) != nil || m.Key != dv.key.String() {
		return nil, false
	}
	switch {
	case m.Digest == "" && pending == nil:
		// Handed out before it was hashed, and the hash failed, or the
		// process that converted it ended first: not stored, not reused.
		return nil, false
	case m.Digest == "":
	case blob.ValidateDigest(m.Digest) != nil:
		return nil, false
	default:
		pending = nil
	}
	if m.Unsynced != "" && m.Unsynced != bootID() {
		return nil, false // written before a machine crash, maybe torn
	}
	p := c.imagePath(dv)
	fi, err := os.Stat(p)
	if err != nil || fi.Size() != m.Size || !fi.Mode().IsRegular() {
		return nil, false
	}
	return &Result{Path: p, Size: m.Size, Digest: m.Digest, FromCache: true, pending: pending}, true
}

// Materialize returns the ext4 image of img with opts (nil: the Config's
// free space). In order it uses the image already in WorkDir, the derived
// blob the store holds (downloaded into WorkDir, holes for zero blocks), or
// converts: flattens the layers in one streaming pass straight into the ext4
// writer, finishes the filesystem (see finishFS), stores the image in the
// store under its digest and then the derivation ref. The store is
// Config.LocalStore when img.LocalOnly(), else Config.Store.
//
// An image made before (in WorkDir or in the store, by any caller) is
// handed out only after every layer of img authorized the caller
// (manifest.Layer.Authorize): the manifest and config prove nothing
// about who may have the layers. A conversion authorizes by reading.
//
// Identical concurrent calls of one origin (manifest.Image.Origin) share
// one piece of work, which runs on a context detached from the callers'
// cancellation; each caller stops waiting when its own ctx ends, and a
// caller whose shared work failed tries once more on its own. A failed or
// interrupted conversion leaves no image, no blob and no ref behind
// (temporary files are removed; a crash leaves only files under
// WorkDir/tmp, and the Stager's staging file, which the Stager removes).
// With Config.Stager a conversion hands its image out as soon as it is
// built, with Result.Digest empty (see Result.Hashed), and then, in the
// background, hashes it, commits it and its ref in the Stager, and stores
// both in the Store.
//
// If the store declines the image as too large (blob.ErrTooLarge), the
// image is still returned from WorkDir but not shared.
func (c *Converter) Materialize(ctx context.Context, img manifest.Image, opts *Options) (*Result, error) {
	dv, err := c.derive(img, opts)
	if err != nil {
		return nil, err
	}
	if r, ok := c.local(dv); ok {
		if err := c.authorize(ctx, img); err != nil {
			return nil, err
		}
		c.localHits.Add(1)
		c.mOutcome.WithLabelValues("local").Inc()
		c.used(dv)
		return r, nil
	}
	for attempt := 0; ; attempt++ {
		res, shared, err := c.flights.DoShared(ctx, dv.flight, func(ctx context.Context) (_ *Result, err error) {
			// The flight turns a panic into an error; this one names the image.
			defer safego.Recover(&err, "ext4: materialize "+string(dv.digest))
			fctx, done, err := c.flight(ctx)
			if err != nil {
				return nil, err
			}
			defer done()
			return c.produce(fctx, img, dv)
		})
		if shared {
			c.collapsed.Add(1)
		}
		if err != nil {
			if ctx.Err() != nil && errors.Is(err, ctx.Err()) { // this caller gave up
				return nil, fmt.Errorf("ext4: materialize %s: %w", dv.digest, err)
			}
			if shared && attempt == 0 && ctx.Err() == nil && !contentError(err) {
				continue // the leader's failure is not this caller's answer
			}
			return nil, err
		}
		r := *res
		c.used(dv)
		return &r, nil
	}
}

// flight returns the context a flight's work runs on (fctx, the flight's
// own, detached from its callers) ended also by Close; done must be called
// when the work ends.
func (c *Converter) flight(fctx context.Context) (_ context.Context, done func(), err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, nil, fmt.Errorf("ext4: converter closed: %w", context.Canceled)
	}
	c.running.Add(1)
	fctx, cancel := context.WithCancel(fctx)
	stop := context.AfterFunc(c.base, cancel)
	return fctx, func() { stop(); cancel(); c.running.Done() }, nil
}

// Close stops the conversions, downloads and background stores in flight
// (see Flush) and waits until they have ended and removed their temporary
// files. Materialize calls waiting for them, and later ones that would
// start one, fail with an error wrapping context.Canceled; images already
// made stay (a cancelled background store leaves its image local only).
// Close is idempotent and always returns nil.
func (c *Converter) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.stop()
	c.running.Wait()
	c.work.unlockWorkDir()
	return nil
}

// contentError reports whether err is a property of the image's (verified)
// content, which every caller of one flight would meet again.
func contentError(err error) bool {
	return errors.Is(err, ErrInvalidLayer) || errors.Is(err, layerio.ErrLimitExceeded) ||
		errors.Is(err, manifest.ErrUnknownMediaType)
}

// authorize has every layer of img authorize its caller (see
// manifest.Layer.Authorize) before work derived from them is reused.
func (c *Converter) authorize(ctx context.Context, img manifest.Image) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, l := range img.Layers() {
		g.Go(func() error { return l.Authorize(gctx) })
	}
	if err := g.Wait(); err != nil {
		c.mOutcome.WithLabelValues("refused").Inc()
		return fmt.Errorf("ext4: image %s: not handed out: %w", img.Digest(), err)
	}
	return nil
}

func (c *Converter) produce(ctx context.Context, img manifest.Image, dv derivation) (*Result, error) {
	// Work that writes WorkDir/tmp: see RemoveStale.
	defer c.beginWork()()
	if r, ok := c.local(dv); ok { // finished by a flight that just ended
		if err := c.authorize(ctx, img); err != nil {
			return nil, err
		}
		c.localHits.Add(1)
		c.mOutcome.WithLabelValues("local").Inc()
		return r, nil
	}
	start := time.Now()
	ref, err := dv.store.GetRef(ctx, dv.key)
	if err == nil {
		err = c.verifyRef(dv.key, ref)
	}
	switch {
	case err == nil:
		if err := c.authorize(ctx, img); err != nil {
			return nil, err
		}
		r, derr := c.download(ctx, dv, ref)
		if derr == nil {
			c.downloads.Add(1)
			c.mOutcome.WithLabelValues("downloaded").Inc()
			c.mDuration.WithLabelValues("downloaded").Observe(time.Since(start).Seconds())
			return r, nil
		}
		if !blob.IsMiss(derr) && !errors.Is(derr, errLayout) {
			return nil, derr
		}
		c.cfg.Logger.Warn("ext4: the derived image a derivation ref names cannot be used; converting again", "image", dv.digest, "derived", ref.Digest, "store", dv.store.Name(), "err", derr)
		// The ref outlived its blob, the blob was corrupt, or it is not an
		// image this version can finish: convert again (and replace the ref).
	case blob.IsMiss(err):
		c.cfg.Logger.Debug("ext4: no derived image stored; converting", "image", dv.digest, "key", dv.key.String(), "store", dv.store.Name(), "err", err)
	default:
		return nil, fmt.Errorf("ext4: get derivation ref for %s from %s: %w", dv.digest, dv.store.Name(), err)
	}

	c.conversions.Add(1)
	r, err := c.convert(ctx, img, dv)
	if err != nil {
		c.failures.Add(1)
		c.mOutcome.WithLabelValues("failed").Inc()
		return nil, err
	}
	c.mOutcome.WithLabelValues("converted").Inc()
	c.mDuration.WithLabelValues("converted").Observe(time.Since(start).Seconds())
	c.mBytes.Add(float64(r.Size))
	return r, nil
}

// download copies the derived blob ref points at into WorkDir, or links
// the Stager's own file of it (see linkStaged).
func (c *Converter) download(ctx context.Context, dv derivation, ref blob.Ref) (*Result, error) {
	if err := ref.Validate(); err != nil {
		return nil, fmt.Errorf("ext4: derivation ref for %s: %w", dv.digest, err)
	}
	if r, ok, absent := c.linkStaged(ctx, dv, ref, time.Time{}); ok { // no copy: the local tier's own file
		return r, nil
	} else if r, ok, err := c.downloadStaged(ctx, dv, ref, absent); err != nil || ok {
		return r, err
	}
	rc, _, err := dv.store.Open(ctx, ref.Digest)
	if err != nil {
		return nil, fmt.Errorf("ext4: open derived image %s from %s: %w", ref.Digest, dv.store.Name(), err)
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(c.tmpDir, "download-*.ext4")
	if err != nil {
		return nil, fmt.Errorf("ext4: %w", err)
	}
	ok := false
	defer discardUnless(&ok, tmp)
	sf := newSparseFile(tmp)
	buf := make([]byte, 1<<20)
	v := blob.NewVerifier(rc, ref.Digest, ref.Size, nil)
	if _, err := io.CopyBuffer(sf, withCtx(ctx, v), buf); err != nil {
		return nil, fmt.Errorf("ext4: download derived image %s from %s: %w", ref.Digest, dv.store.Name(), err)
	}
	if _, err := sf.Finish(); err != nil {
		return nil, fmt.Errorf("ext4: %w", err)
	}
	r := &Result{Digest: ref.Digest, FromCache: true}
	if err := tmp.Sync(); err != nil { // trusted without re-hashing after a crash
		return nil, fmt.Errorf("ext4: sync image: %w", err)
	}
	if r.Size, err = c.grow(tmp, dv); err != nil {
		return nil, err
	}
	if err := c.publish(dv, tmp, r); err != nil {
		return nil, err
	}
	ok = true
	return r, nil
}

// convert builds the image, stores blob and ref, and publishes it locally:
// in place in the Stager when there is one (see convertStaged), else
// through WorkDir (convertCopy).
func (c *Converter) convert(ctx context.Context, img manifest.Image, dv derivation) (*Result, error) {
	if c.cfg.Stager != nil {
		return c.convertStaged(ctx, img, dv)
	}
	return c.convertCopy(ctx, img, dv)
}

// buildRetry builds the stored image of dv into the empty file f, once
// more if a layer's bytes were wrong.
func (c *Converter) buildRetry(ctx context.Context, img manifest.Image, f *os.File, dv derivation) error {
	for attempt := 0; ; attempt++ {
		err := c.build(ctx, img, f, growSpec{GDTBlocks: dv.free.GDTBlocks})
		if err == nil {
			return nil
		}
		if attempt > 0 || !errors.Is(err, blob.ErrMismatch) || ctx.Err() != nil {
			return fmt.Errorf("ext4: convert %s: %w", dv.digest, err)
		}
		// A layer's bytes were wrong (a corrupt cached copy, which the
		// tier that served it has dropped or marked): convert once more.
		c.mOutcome.WithLabelValues("corrupt").Inc()
		if err := f.Truncate(0); err != nil {
			return fmt.Errorf("ext4: %w", err)
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("ext4: %w", err)
		}
	}
}

// convertCopy builds the image in WorkDir/tmp, stores blob and ref
// through the store (a copy), and publishes the file.
func (c *Converter) convertCopy(ctx context.Context, img manifest.Image, dv derivation) (*Result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tmp, err := os.CreateTemp(c.tmpDir, "convert-*.ext4")
	if err != nil {
		return nil, fmt.Errorf("ext4: %w", err)
	}
	ok := false
	defer discardUnless(&ok, tmp)

	if err := c.buildRetry(ctx, img, tmp, dv); err != nil {
		return nil, err
	}
	size, err := tmp.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("ext4: %w", err)
	}
	// Flush to disk (the local copy is trusted without re-hashing after a
	// crash) while hashing from the page cache.
	synced := make(chan error, 1)
	go func() { synced <- tmp.Sync() }()
	h := sha256.New()
	_, herr := io.CopyBuffer(h, withCtx(ctx, io.NewSectionReader(tmp, 0, size)), make([]byte, 1<<20))
	if serr := <-synced; serr != nil {
		return nil, fmt.Errorf("ext4: sync image: %w", serr)
	}
	if herr != nil {
		return nil, fmt.Errorf("ext4: hash image: %w", herr)
	}
	d := blob.NewDigestFromHash(h)
	r := &Result{Size: size, Digest: d}

	// Blob first, then the ref that points at it.
	err = dv.store.Put(ctx, d, size, hashedImage{io.NewSectionReader(tmp, 0, size), d})
	switch {
	case err == nil:
		if err := dv.store.PutRef(ctx, dv.key, c.signedRef(dv.key, d, size)); err != nil {
			return nil, fmt.Errorf("ext4: put derivation ref for %s to %s: %w", dv.digest, dv.store.Name(), err)
		}
	case errors.Is(err, blob.ErrTooLarge):
		// Usable here, not shared.
	default:
		return nil, fmt.Errorf("ext4: put derived image %s to %s: %w", d, dv.store.Name(), err)
	}
	if r.Size, err = c.grow(tmp, dv); err != nil {
		return nil, err
	}
	if err := c.publish(dv, tmp, r); err != nil {
		return nil, err
	}
	ok = true
	return r, nil
}

// hashedImage is the image file just hashed to d, read again to store it.
// It is a blob.VerifiedReader, so the store does not hash 500 MB a second
// time: the bytes are those hashed, since nothing writes to the file in
// between (it is the converter's own temporary file, in its private work
// directory, and grow runs after the Put).
type hashedImage struct {
	*io.SectionReader
	d blob.Digest
}

// VerifiedBlob implements blob.VerifiedReader.
func (h hashedImage) VerifiedBlob() (blob.Digest, int64) { return h.d, h.Size() }

// build writes the ext4 image of img into f.
//
// It bounds the whole image's work (Config.MaxLayers, MaxEntries,
// MaxImageBytes) and keeps the free space of WorkDir's file system (see
// newSpaceCheckedFile). A layer whose content failed a per-layer limit or
// was invalid is remembered per digest and origin (layerio.Failures): a
// build with it fails at once, without reading anything, until the memory
// expires. Each layer's read-ahead is released as soon as the layer is
// consumed, so memory does not grow with the number of layers.
func (c *Converter) build(ctx context.Context, img manifest.Image, f *os.File, free growSpec) error {
	layers := img.Layers()
	maxLayers := c.cfg.MaxLayers
	if maxLayers == 0 {
		maxLayers = DefaultMaxLayers
	}
	if maxLayers > 0 && len(layers) > maxLayers {
		return fmt.Errorf("%w: %d layers (at most %d)", ErrTooManyLayers, len(layers), maxLayers)
	}
	origin := img.Origin()
	for _, l := range layers {
		if err := c.failed.Check(l.Digest(), origin); err != nil {
			return fmt.Errorf("layer %s: %w", l.Digest(), err)
		}
	}
	lim := FlattenLimits{MaxEntries: c.cfg.MaxEntries, MaxBytes: c.cfg.MaxImageBytes, MaxLayerBytes: c.cfg.MaxLayerBytes}
	if lim.MaxEntries == 0 {
		lim.MaxEntries = DefaultMaxEntries
	}
	if lim.MaxBytes == 0 {
		lim.MaxBytes = 2 * c.cfg.MaxDiskSize
	}
	current := -1 // the layer Flatten reads; read after flatErr
	ras := make([]*readahead, len(layers))
	defer func() {
		for _, r := range ras {
			if r != nil {
				r.dispose()
			}
		}
	}()
	startRA := func(i int) {
		if i >= 0 && ras[i] == nil {
			l := layers[i]
			ras[i] = startReadahead(ctx, func(ctx context.Context) (io.ReadCloser, error) {
				return layerio.Open(ctx, l, layerio.Limits{MaxBytes: c.cfg.MaxLayerBytes})
			})
		}
	}
	stopPrefetch := prefetch(ctx, layers)
	defer stopPrefetch()
	openers := make([]TarOpener, len(layers))
	for i := range layers {
		openers[i] = func(ctx context.Context) (io.ReadCloser, error) {
			current = i
			startRA(i)
			startRA(i - 1) // decompress the next layer down while this one is written
			return ras[i], nil
		}
	}

	pr, pw := io.Pipe()
	flatErr := make(chan error, 1)
	go func() {
		var err error
		defer func() {
			pw.CloseWithError(err)
			flatErr <- err
		}()
		defer safego.Recover(&err, "ext4: flatten")
		// Hand the writer large chunks: fewer goroutine switches per byte.
		bw := bufio.NewWriterSize(pw, 1<<20)
		if _, err = FlattenLimited(ctx, openers, bw, c.tmpDir, lim); err == nil {
			err = bw.Flush()
		}
	}()
	sf := sparse.NewWriter(newSpaceCheckedFile(f, filepath.Dir(f.Name())), fsBlockSize)
	convErr := tar2ext4.ConvertTarToExt4(pr, sf, tar2ext4.MaximumDiskSize(c.cfg.MaxDiskSize))
	pr.CloseWithError(errWriterStopped)
	ferr := <-flatErr
	if ferr != nil && !(convErr != nil && errors.Is(ferr, errWriterStopped)) {
		// Flatten settled the layer's stream before closing it (see
		// flattener.layer): a rotten cached copy is a mismatch by now, and
		// only what the layer's bytes really are is remembered.
		if current >= 0 && ctx.Err() == nil && (errors.Is(ferr, ErrInvalidLayer) || layerio.IsLayerLimit(ferr)) {
			c.failed.Remember(layers[current].Digest(), origin, ferr)
		}
		return ferr
	}
	if convErr != nil {
		return fmt.Errorf("write ext4: %w", convErr)
	}
	if _, err := sf.Finish(); err != nil {
		return err
	}
	if _, err := finishFS(f, free); err != nil {
		return err
	}
	return nil
}

// prefetchLanes is how many layers a conversion downloads at once ahead
// of the flattener.
const prefetchLanes = 2

// prefetch makes the layers of a conversion local in the background
// (manifest.Prefetcher), in the order Flatten reads them (top first),
// except the top two, which build reads ahead itself: a cold image's later
// layers download while the earlier ones are converted, instead of each
// in its turn. It stops at the first failure (the layers left are read
// when Flatten gets to them). The returned func stops it and waits.
func prefetch(ctx context.Context, layers []manifest.Layer) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var next atomic.Int64 // the next layer to prefetch, counting down
	next.Store(int64(len(layers)) - 3)
	var failed atomic.Bool
	for range prefetchLanes {
		wg.Go(func() {
			for !failed.Load() && ctx.Err() == nil {
				i := next.Add(-1) + 1
				if i < 0 {
					return
				}
				p, ok := layers[i].(manifest.Prefetcher)
				if !ok {
					continue
				}
				var err error
				func() {
					defer safego.Recover(&err, "ext4: prefetch layer "+string(layers[i].Digest()))
					err = p.Prefetch(ctx)
				}()
				if err != nil {
					failed.Store(true)
				}
			}
		})
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

// grow adds dv's free space to the stored image in f and returns the new
// size.
func (c *Converter) grow(f *os.File, dv derivation) (int64, error) {
	if _, err := finishFS(f, dv.free); err != nil {
		return 0, fmt.Errorf("ext4: add free space to %s: %w", dv.digest, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("ext4: %w", err)
	}
	return fi.Size(), nil
}

// discardUnless closes and removes tmp, an image file not published,
// unless *ok.
func discardUnless(ok *bool, tmp *os.File) {
	if !*ok {
		tmp.Close()
		os.Remove(tmp.Name())
	}
}

// publish makes tmp the local image of dv: read-only and this user's only
// (0400), sidecar first, then the image by rename.
func (c *Converter) publish(dv derivation, tmp *os.File, r *Result) error {
	if err := tmp.Chmod(0o400); err != nil {
		return fmt.Errorf("ext4: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("ext4: %w", err)
	}
	return c.publishPath(dv, tmp.Name(), r, true)
}

// publishPath makes the read-only file at path, in WorkDir/tmp, the local
// image of dv: sidecar first, then the image by rename. synced says the
// file is on disk already; if not, the sidecar records this boot (see
// localMeta.Unsynced) until markSynced.
func (c *Converter) publishPath(dv derivation, path string, r *Result, synced bool) error {
	m := localMeta{Digest: r.Digest, Size: r.Size, Key: dv.key.String()}
	if !synced {
		if m.Unsynced = bootID(); m.Unsynced == "" {
			m.Unsynced = "unknown" // never matches: not reused after a restart
		}
	}
	c.metaMu.Lock()
	defer c.metaMu.Unlock()
	if err := c.writeMeta(dv, m); err != nil {
		return err
	}
	r.Path = c.imagePath(dv)
	if err := os.Rename(path, r.Path); err != nil {
		os.Remove(c.metaPath(dv))
		return fmt.Errorf("ext4: %w", err)
	}
	return nil
}

// writeMeta replaces dv's sidecar with m (by rename).
func (c *Converter) writeMeta(dv derivation, m localMeta) error {
	meta, _ := json.Marshal(m)
	mt, err := os.CreateTemp(c.tmpDir, "meta-*.json")
	if err != nil {
		return fmt.Errorf("ext4: %w", err)
	}
	_, werr := mt.Write(meta)
	cerr := mt.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(mt.Name(), c.metaPath(dv))
	}
	if werr != nil {
		os.Remove(mt.Name())
		return fmt.Errorf("ext4: %w", werr)
	}
	return nil
}

// markSynced fsyncs f, the file of dv's local image published unsynced,
// and then clears the sidecar's Unsynced if the local image is still that
// file. A failure leaves the sidecar as it is: the image is not reused
// after a machine crash.
func (c *Converter) markSynced(dv derivation, f *os.File) error {
	if err := syncImage(f); err != nil {
		return fmt.Errorf("ext4: sync image: %w", err)
	}
	return c.editMeta(dv, f, func(m *localMeta) bool {
		if m.Unsynced == "" {
			return false
		}
		m.Unsynced = ""
		return true
	})
}

// editMeta applies edit to the sidecar of dv's local image, if that image
// is still the file f (not replaced or removed meanwhile), and writes it
// back when edit reports a change.
func (c *Converter) editMeta(dv derivation, f *os.File, edit func(*localMeta) bool) error {
	c.metaMu.Lock()
	defer c.metaMu.Unlock()
	b, err := os.ReadFile(c.metaPath(dv))
	if err != nil {
		return nil // removed meanwhile
	}
	var m localMeta
	if json.Unmarshal(b, &m) != nil || m.Key != dv.key.String() || !edit(&m) {
		return nil
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("ext4: %w", err)
	}
	if li, err := os.Stat(c.imagePath(dv)); err != nil || !os.SameFile(fi, li) {
		return nil
	}
	return c.writeMeta(dv, m)
}

// IsMaterialized reports whether Materialize(ctx, img, opts) would run no
// conversion: the image is in WorkDir, or the Store holds its derivation
// ref and the blob it points at.
func (c *Converter) IsMaterialized(ctx context.Context, img manifest.Image, opts *Options) (bool, error) {
	dv, err := c.derive(img, opts)
	if err != nil {
		return false, err
	}
	if _, ok := c.local(dv); ok {
		return true, nil
	}
	ref, err := dv.store.GetRef(ctx, dv.key)
	if err == nil {
		err = c.verifyRef(dv.key, ref)
	}
	if blob.IsMiss(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("ext4: get derivation ref for %s from %s: %w", dv.digest, dv.store.Name(), err)
	}
	if _, err := dv.store.Stat(ctx, ref.Digest); err != nil {
		if blob.IsMiss(err) {
			return false, nil
		}
		return false, fmt.Errorf("ext4: stat derived image %s in %s: %w", ref.Digest, dv.store.Name(), err)
	}
	return true, nil
}

// Cleanup removes the local image of img with opts from WorkDir (the
// caller must be done with Result.Path). The derived blob and its ref stay
// in the Store, whose own eviction manages them. Removing an image that is
// not there is not an error.
func (c *Converter) Cleanup(ctx context.Context, img manifest.Image, opts *Options) error {
	dv, err := c.derive(img, opts)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// Sidecar first: without it the image is not considered present.
	for _, p := range []string{c.metaPath(dv), c.imagePath(dv)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("ext4: cleanup: %w", err)
		}
	}
	return nil
}

// staleAfter is the age past which New removes temporary files left in
// WorkDir/tmp by a crashed process (no conversion takes that long).
const staleAfter = 24 * time.Hour

// removeStale removes entries of dir older than age and returns how many
// it removed; errors are ignored (another process may be removing them too).
func removeStale(dir string, age time.Duration) int {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > age {
			if os.Remove(filepath.Join(dir, e.Name())) == nil {
				n++
			}
		}
	}
	return n
}

var errWriterStopped = errors.New("ext4 writer stopped reading")

// readerFunc adapts a function to io.Reader.
type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// withCtx returns a reader that fails once ctx is done.
func withCtx(ctx context.Context, r io.Reader) io.Reader {
	return readerFunc(func(p []byte) (int, error) {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		return r.Read(p)
	})
}

// Prune removes the local images that nothing references any more: those
// whose derivation ref the Store no longer holds, or holds unsigned or
// pointing at another image, and files without a valid sidecar. It returns
// how many images it removed and their size. A process that has an image
// open keeps reading it (removal unlinks).
func (c *Converter) Prune(ctx context.Context) (removed int, freed int64, err error) {
	ents, err := os.ReadDir(c.imgDir)
	if err != nil {
		return 0, 0, fmt.Errorf("ext4: prune: %w", err)
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			if img, isImg := strings.CutSuffix(e.Name(), ".ext4"); isImg {
				if _, err := os.Stat(filepath.Join(c.imgDir, img+".json")); errors.Is(err, os.ErrNotExist) {
					freed += c.removeImage(img) // an image without its sidecar is never used
					removed++
				}
			}
			continue
		}
		if err := ctx.Err(); err != nil {
			return removed, freed, fmt.Errorf("ext4: prune: %w", err)
		}
		c.mu.Lock()
		_, hashing := c.pending[id] // referenced once hashed and stored
		c.mu.Unlock()
		if hashing || c.referenced(ctx, filepath.Join(c.imgDir, e.Name())) {
			continue
		}
		freed += c.removeImage(id)
		removed++
	}
	return removed, freed, nil
}

// referenced reports whether the sidecar at path names a derivation whose
// verified ref in the Store still points at the local image.
func (c *Converter) referenced(ctx context.Context, path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	var m localMeta
	if json.Unmarshal(b, &m) != nil {
		return false
	}
	k, err := blob.ParseRefKey(m.Key)
	if err != nil {
		return false
	}
	ref, err := c.cfg.Store.GetRef(ctx, k)
	if err != nil || c.verifyRef(k, ref) != nil {
		return false
	}
	return ref.Digest == m.Digest
}

// removeImage removes the sidecar (first: without it the image is not
// used) and the image of id, and returns the image's size on disk.
func (c *Converter) removeImage(id string) int64 {
	img := filepath.Join(c.imgDir, id+".ext4")
	var size int64
	if fi, err := os.Stat(img); err == nil {
		size = fi.Size()
	}
	os.Remove(filepath.Join(c.imgDir, id+".json"))
	os.Remove(img)
	return size
}
