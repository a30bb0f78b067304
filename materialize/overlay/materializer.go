// Package overlay materializes images as overlayfs lower directories.
//
// Each layer is extracted once into its own directory under Config.Root,
// keyed by its digest, in overlayfs form: OCI whiteouts become 0:0
// character devices and opaque directories carry the opaque xattr
// (trusted.overlay.opaque, or user.overlay.opaque with Config.UserXattr).
// Nothing is ever written outside a layer's directory.
//
// # Layout under Root
//
//	layers/<hex>   the extracted layer, named by the hex of its digest
//	l/<id>         short symlink -> ../layers/<hex>, so that mount options
//	               for images with hundreds of layers stay under a page
//	l/_, l/__      empty directories (padding: overlayfs needs two lower
//	               layers when there is no upper one)
//	meta/<hex>     "<id> <bytes>" for the cache index
//	meta/<hex>.files  the layer's manifest: every entry's type, mode,
//	               owner, size and link target, every file's sha256 (see
//	               Verify), written just after the layer is committed (see
//	               writeManifestLater); missing for layers extracted before
//	               it existed or by a process killed before it was written
//	mounts/<id>.json  mount leases: layers held for a mount that outlives
//	               the process which made it (see RecordMount)
//	tmp/           extractions in progress (temp dir, then rename)
//
// One Materializer owns its Root: two processes must not share one.
package overlay

import (
	"container/list"
	"context"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/privdir"
	"github.com/strata-oci/strata/internal/safego"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/internal/layerio"
)

// Sentinel errors.
var (
	// ErrInvalidLayer: a layer's tar stream holds an entry the applier
	// refuses (a hard link to a missing or outside target, an invalid
	// whiteout, an unsupported entry type). It is layerio.ErrInvalidLayer,
	// the same value as ext4.ErrInvalidLayer.
	ErrInvalidLayer = layerio.ErrInvalidLayer
	// ErrLimitExceeded: a layer exceeds Config.MaxLayerBytes or
	// Config.MaxEntries. It is layerio.ErrLimitExceeded.
	ErrLimitExceeded = layerio.ErrLimitExceeded
	// ErrBudgetExceeded: the layers of one image exceed
	// Config.MaxImageBytes or Config.MaxImageEntries. It wraps
	// ErrLimitExceeded; unlike a layer's own limits it is not remembered
	// per layer (it depends on the image). It is layerio.ErrBudgetExceeded.
	ErrBudgetExceeded = layerio.ErrBudgetExceeded
	// ErrTooManyLayers: overlayfs stacks at most MaxLayers lower layers.
	ErrTooManyLayers = errors.New("too many layers for overlayfs")
	// ErrNotPrivate: Root (or a directory under it) belongs to another
	// user, who could reach the extracted layers (setuid programs, device
	// nodes) through it. New refuses such a Root.
	ErrNotPrivate = errors.New("directory not owned by this process's user")
)

// MaxLayers is the most lower layers overlayfs accepts (OVL_MAX_STACK).
const MaxLayers = 500

// Defaults of the image-wide limits (see Config.MaxImageBytes).
const (
	DefaultMaxImageBytes   = 2 * layerio.DefaultMaxBytes
	DefaultMaxImageEntries = 10_000_000
)

// Config configures a Materializer.
type Config struct {
	// Root is the directory that holds extracted layers (created if
	// missing). Required. It must belong to this process's effective uid
	// (New fails with ErrNotPrivate otherwise), and New takes away any
	// permission of group and others on it (mode 0700), so that no other
	// local user reaches the layers' setuid programs and device nodes.
	Root string
	// Budget bounds the bytes of file content kept in layer directories.
	// After each materialization and lease release, unleased layers are
	// evicted least recently used first until the total fits. Leased layers
	// are never evicted, so the total may exceed Budget while they are
	// held. 0 means no bound. A layer whose files take more than Budget
	// on disk (holes do not count) fails with ErrLimitExceeded while it is
	// written, and extraction stops with an error wrapping unix.ENOSPC
	// before the file system's free space falls under a small reserve.
	Budget int64
	// Parallelism bounds how many layers of one Materialize call extract at
	// once. 0 means GOMAXPROCS.
	Parallelism int
	// MaxLayerBytes bounds a layer's decompressed size and, separately, the
	// bytes of file content it writes (sparse files count at full size)
	// (0: layerio.DefaultMaxBytes, negative: no bound). MaxEntries bounds its tar entries (0:
	// 10 million, negative: no bound). Exceeding either fails the layer with
	// ErrLimitExceeded.
	MaxLayerBytes int64
	MaxEntries    int64
	// MaxImageBytes bounds the bytes of file content on disk (holes
	// excluded) of all the layers of one Materialize call together:
	// layers it extracts count while they are written, layers it reuses
	// count their recorded size (0: DefaultMaxImageBytes, negative: no
	// bound). MaxImageEntries bounds the tar entries of the layers it
	// extracts (0: DefaultMaxImageEntries, negative: no bound). Exceeding
	// either fails the call with an error wrapping ErrBudgetExceeded.
	MaxImageBytes   int64
	MaxImageEntries int64
	// UserXattr marks opaque directories with user.overlay.opaque instead of
	// trusted.overlay.opaque; such layers must be mounted with the
	// "userxattr" option, which MountOptions then includes.
	UserXattr bool
	// Durable flushes each extracted layer to disk (syncfs) before it
	// becomes visible, so a power loss cannot leave a partial layer. Without
	// it a process crash is still safe: a layer appears only complete.
	Durable bool
	// NoEvict turns off budget eviction (the pass New runs and those after
	// each Materialize and lease release) and keeps mount leases whose
	// mount is gone: for a process that opens the cache only to look at
	// it. Budget is then reported, never applied. Cleanup still works.
	NoEvict bool
	// Metrics, when set, receives the materializer's collectors
	// (strata_overlay_*). Two Materializers need two registerers (for
	// example prometheus.WrapRegistererWith with a distinguishing label).
	Metrics prometheus.Registerer
	// Logger receives what New finds and repairs in Root (leftover
	// temporary directories of killed extractions removed, stray entries,
	// orphaned metadata and links dropped) and what it cannot repair. nil:
	// nothing is logged.
	Logger *slog.Logger
}

// Materializer extracts layers into overlayfs lower directories and keeps
// them under a byte budget. It is safe for concurrent use.
type Materializer struct {
	cfg        Config
	root       string
	mountDir   string
	privileged bool
	met        *metrics

	mu      sync.Mutex
	layers  map[blob.Digest]*layerEntry
	lru     *list.List // of *layerEntry, most recently used first
	total   int64
	flights map[flightKey]*flight
	// quiet is closed while no extraction is in flight (flights is
	// empty); a new one is made when the first starts. Manifest walks
	// wait for it (see writeManifestLater).
	quiet  chan struct{}
	ids    map[string]blob.Digest // short id -> digest
	mounts map[string]*mountRec   // mount leases by id
	// staleAtOpen are the mount leases New dropped, until DropStaleMounts
	// reports them.
	staleAtOpen []MountLease

	// running counts extraction goroutines, including abandoned ones that
	// are still cleaning up.
	running sync.WaitGroup
	// closed refuses new extractions once Close was called.
	closed bool

	failed layerio.Failures // layers whose content failed a limit or was invalid

}

type layerEntry struct {
	digest blob.Digest
	hex    string
	id     string
	size   int64
	leases int
	elem   *list.Element
	// quarantine, once set, is where a layer found tampered with while
	// leased was moved out of service (see Verify): removed when the last
	// lease goes.
	quarantine string
	// manifestDone, when not nil, is closed once the layer's manifest,
	// written in the background after the layer is committed at time
	// committed (see writeManifestLater), is in place or has failed.
	manifestDone chan struct{}
	committed    time.Time
	// changed, set before manifestDone is closed, is why the manifest
	// writer found the layer changed since its commit and took it out of
	// service (changedLeased: a lease held it then): Verify, which waited
	// for the manifest, reports it modified.
	changed       error
	changedLeased bool
	// dropped, when not nil, is closed when the entry is unindexed: a
	// manifest walk waiting to start gives up (see awaitQuiet).
	dropped chan struct{}
}

// unleaseLocked drops one lease of e; the last lease of a quarantined
// layer removes its directory (in the background: it may be large).
func (m *Materializer) unleaseLocked(e *layerEntry) {
	e.leases--
	if e.leases == 0 && e.quarantine != "" {
		q := e.quarantine
		e.quarantine = ""
		m.running.Add(1)
		go func() {
			defer m.running.Done()
			removeAll(q)
		}()
	}
}

// flightKey names an extraction in progress: a layer, read from one
// origin. Callers of another origin extract on their own (the first commit
// wins, the others discard theirs), so a caller whose registry stalls or
// lies never holds up or fails another's materialization.
//
// These flights are the materializer's own, not internal/flight's
// Group.Do, because three of their promises need the materializer's lock
// around the flight itself, which a Group (with a lock of its own) cannot
// give without growing hooks into it:
//   - the layer is committed and leased to every caller still waiting in
//     one step under m.mu (e.leases += f.waiters), so that no eviction runs
//     between the commit and the callers' leases; with Do each caller
//     would lease after Do returned, and an evict in between would remove
//     a layer just extracted (under a full budget, again and again);
//   - the look in m.layers and the joining of a flight are one step under
//     m.mu, so no caller starts a second extraction of a layer committed
//     in between;
//   - an extraction is counted in m.running (and refused after Close) by
//     the caller that starts it, before Materialize can return: Close and
//     running.Wait see an abandoned extraction until it has removed its
//     temporary directory, where Do's goroutine would count itself only
//     once it runs.
type flightKey struct {
	digest blob.Digest
	origin string
}

// flight is one extraction in progress; waiters of its origin share it.
type flight struct {
	done    chan struct{}
	err     error
	entry   *layerEntry
	waiters int
	cancel  context.CancelFunc
	budget  *imageBudget // of the call that started it, charged while writing
}

// New opens (creating if needed) the layer cache under cfg.Root, removes
// leftovers of interrupted extractions and indexes the layers already
// there.
func New(cfg Config) (*Materializer, error) {
	if cfg.Root == "" {
		return nil, errors.New("overlay: Config.Root is required")
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("overlay: root: %w", err)
	}
	if cfg.Parallelism <= 0 {
		cfg.Parallelism = runtime.GOMAXPROCS(0)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = 10_000_000
	}
	if cfg.MaxImageBytes == 0 {
		cfg.MaxImageBytes = DefaultMaxImageBytes
	}
	if cfg.MaxImageEntries == 0 {
		cfg.MaxImageEntries = DefaultMaxImageEntries
	}
	met, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, fmt.Errorf("overlay: metrics: %w", err)
	}
	m := &Materializer{
		cfg: cfg, root: root, mountDir: filepath.Join(root, "l"), privileged: os.Geteuid() == 0, met: met,
		layers: map[blob.Digest]*layerEntry{}, lru: list.New(), flights: map[flightKey]*flight{}, ids: map[string]blob.Digest{},
		mounts: map[string]*mountRec{},
	}
	if err := probeOpenat2(); err != nil {
		return nil, err
	}
	// Extracted layers keep their setuid programs and device nodes, so no
	// other user may have a path into them (CVE-2021-41091): Root and the
	// directories leading to layers are private. overlayfs reads lower
	// layers with the mounter's credentials, so mounts still work.
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	for _, d := range []struct {
		p    string
		mode os.FileMode
	}{{root, 0o700}, {m.path("layers"), 0o700}, {m.mountDir, 0o700}, {m.path("l", "_"), 0o755}, {m.path("l", "__"), 0o755}, {m.path("meta"), 0o700}, {m.path("tmp"), 0o700}, {m.path(mountsDir), 0o700}} {
		if d.mode == 0o700 {
			if err := privateDir(d.p, d.p == root); err != nil {
				return nil, fmt.Errorf("overlay: %w", err)
			}
		} else if err := os.MkdirAll(d.p, d.mode); err != nil {
			return nil, fmt.Errorf("overlay: %w", err)
		}
	}
	if err := m.load(); err != nil {
		return nil, fmt.Errorf("overlay: loading %s: %w", root, err)
	}
	return m, nil
}

// privateDir makes dir private (see privdir.Ensure); a directory another
// user owns is refused with ErrNotPrivate.
func privateDir(dir string, follow bool) error {
	err := privdir.Ensure(dir, false, follow)
	if errors.Is(err, privdir.ErrForeignOwner) {
		return fmt.Errorf("%w: %v; refusing to keep extracted layers where another user controls them (use a directory of your own)", ErrNotPrivate, err)
	}
	return err
}

func probeOpenat2() error {
	fd, err := unix.Openat2(unix.AT_FDCWD, "/", &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT})
	if err != nil {
		return fmt.Errorf("overlay: openat2 with RESOLVE_IN_ROOT is required (Linux 5.6 or later): %w", err)
	}
	unix.Close(fd)
	return nil
}

func (m *Materializer) path(elem ...string) string {
	return filepath.Join(append([]string{m.root}, elem...)...)
}

// load rebuilds the index from disk.
func (m *Materializer) load() error {
	tmp, err := os.ReadDir(m.path("tmp"))
	if err != nil {
		return err
	}
	for _, e := range tmp {
		// What cannot be removed is reported and left: it must not make
		// the whole root unusable.
		if err := removeAll(m.path("tmp", e.Name())); err != nil {
			m.cfg.Logger.Warn("overlay: cannot remove a leftover temporary directory; skipped", "err", err)
		} else {
			m.cfg.Logger.Info("overlay: removed the leftover of an extraction that did not finish", "dir", m.path("tmp", e.Name()))
		}
	}
	dirs, err := os.ReadDir(m.path("layers"))
	if err != nil {
		return err
	}
	type found struct {
		e     *layerEntry
		mtime time.Time
	}
	var all []found
	present := map[string]bool{}
	for _, de := range dirs {
		h := de.Name()
		d := blob.Digest("sha256:" + h)
		if !de.IsDir() || blob.ValidateDigest(d) != nil {
			if err := removeAll(m.path("layers", h)); err != nil {
				m.cfg.Logger.Warn("overlay: cannot remove a stray entry; skipped", "err", err)
			} else {
				m.cfg.Logger.Info("overlay: removed a stray entry of the layers directory", "path", m.path("layers", h))
			}
			continue
		}
		present[h] = true
		e := &layerEntry{digest: d, hex: h}
		var mtime time.Time
		if b, err := os.ReadFile(m.path("meta", h)); err == nil {
			if f := strings.Fields(string(b)); len(f) == 2 {
				e.id = f[0]
				e.size, _ = strconv.ParseInt(f[1], 10, 64)
			}
			if fi, err := os.Stat(m.path("meta", h)); err == nil {
				mtime = fi.ModTime()
			}
		}
		if e.id == "" || !m.linkOK(e.id, h) {
			if e.size, err = contentSize(m.path("layers", h)); err != nil {
				return err
			}
			if e.id, err = m.allocID(h); err != nil {
				return err
			}
			if err := m.writeMeta(e); err != nil {
				return err
			}
		}
		m.ids[e.id] = d
		all = append(all, found{e, mtime})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mtime.After(all[j].mtime) })
	for _, f := range all {
		f.e.elem = m.lru.PushBack(f.e)
		m.layers[f.e.digest] = f.e
		m.total += f.e.size
	}
	metas, err := os.ReadDir(m.path("meta"))
	if err != nil {
		return err
	}
	for _, de := range metas {
		if !present[strings.TrimSuffix(de.Name(), manifestSuffix)] {
			if os.Remove(m.path("meta", de.Name())) == nil {
				m.cfg.Logger.Debug("overlay: removed the metadata of a layer that is gone", "path", m.path("meta", de.Name()))
			}
		}
	}
	links, err := os.ReadDir(m.mountDir)
	if err != nil {
		return err
	}
	for _, de := range links {
		if de.Name() == "_" || de.Name() == "__" {
			continue
		}
		if _, ok := m.ids[de.Name()]; !ok {
			os.RemoveAll(filepath.Join(m.mountDir, de.Name()))
		}
	}
	m.met.cachedBytes.Set(float64(m.total))
	m.met.cachedLayers.Set(float64(len(m.layers)))
	// Mount leases before the budget pass: a mounted layer is never evicted.
	if err := m.loadMounts(); err != nil {
		return err
	}
	if !m.cfg.NoEvict {
		stale, err := m.DropStaleMounts()
		if err != nil {
			return err
		}
		m.staleAtOpen = stale
	}
	m.evict()
	return nil
}

func contentSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	return n, err
}

var b32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// allocID picks the shortest free prefix (at least 4 characters) of the
// base32 digest as the layer's short id and links l/<id> to the layer.
func (m *Materializer) allocID(h string) (string, error) {
	raw, err := hex.DecodeString(h)
	if err != nil {
		return "", err
	}
	full := b32.EncodeToString(raw)
	want := filepath.Join("..", "layers", h)
	for n := 4; n <= len(full); n++ {
		id := full[:n]
		link := filepath.Join(m.mountDir, id)
		target, err := os.Readlink(link)
		switch {
		case err == nil && target == want:
			return id, nil
		case err == nil:
			if d, taken := m.ids[id]; taken && d != blob.Digest("sha256:"+h) {
				continue
			}
			if _, serr := os.Stat(link); serr == nil {
				continue // a live link of another layer not yet indexed
			}
			if err := os.Remove(link); err != nil {
				return "", err
			}
			fallthrough
		case errors.Is(err, fs.ErrNotExist):
			if err := os.Symlink(want, link); err != nil {
				return "", err
			}
			return id, nil
		default:
			if errors.Is(err, unix.EINVAL) {
				continue // taken by something that is not a symlink
			}
			return "", err
		}
	}
	return "", fmt.Errorf("no free short id for layer %s", h)
}

func (m *Materializer) linkOK(id, h string) bool {
	t, err := os.Readlink(filepath.Join(m.mountDir, id))
	return err == nil && t == filepath.Join("..", "layers", h)
}

func (m *Materializer) writeMeta(e *layerEntry) error {
	p := m.path("meta", e.hex)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(e.id+" "+strconv.FormatInt(e.size, 10)+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

func (m *Materializer) release(es []*layerEntry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range es {
		if e != nil {
			m.unleaseLocked(e)
		}
	}
}

// Materialize makes sure every layer of img is extracted and returns the
// lower directories, mount options and a lease the caller must Release.
// Layers already extracted are reused once the layer authorizes the caller
// (manifest.Layer.Authorize: a layer directory is handed only to callers
// that proved they may have its blob); missing ones are extracted in
// parallel (at most Config.Parallelism at once), and concurrent requests
// for one layer from one origin (manifest.Image.Origin) share a single
// extraction. A caller giving up (ctx done) leaves the extraction running
// for the others; it stops when nobody waits for it any more. A caller
// whose shared extraction failed tries once more on its own. On error
// nothing is leased and no partial layer is left.
func (m *Materializer) Materialize(ctx context.Context, img manifest.Image) (*Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("overlay: image %s: %w", img.Digest(), err)
	}
	ls := img.Layers()
	if len(ls) > MaxLayers {
		return nil, fmt.Errorf("overlay: image %s: %w: %d layers (at most %d)", img.Digest(), ErrTooManyLayers, len(ls), MaxLayers)
	}
	for i, l := range ls {
		if err := blob.ValidateDigest(l.Digest()); err != nil {
			return nil, fmt.Errorf("overlay: image %s: layer %d: %w", img.Digest(), i, err)
		}
	}
	origin := img.Origin()
	budget := &imageBudget{maxBytes: m.cfg.MaxImageBytes, maxEntries: m.cfg.MaxImageEntries}
	entries := make([]*layerEntry, len(ls))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(m.cfg.Parallelism)
	for i, l := range ls {
		g.Go(func() error {
			e, err := m.ensure(gctx, l, origin, budget)
			entries[i] = e
			return err
		})
	}
	if err := g.Wait(); err != nil {
		m.release(entries)
		m.evict()
		return nil, fmt.Errorf("overlay: image %s: %w", img.Digest(), err)
	}
	m.evict()
	res := &Result{MountDir: m.mountDir, Lease: &Lease{m: m, entries: entries}}
	var ids []string
	seen := map[blob.Digest]bool{}
	for i := len(entries) - 1; i >= 0; i-- {
		e := entries[i]
		if seen[e.digest] {
			continue
		}
		seen[e.digest] = true
		ids = append(ids, e.id)
		res.LowerDirs = append(res.LowerDirs, m.path("layers", e.hex))
		if rootOpaque(res.LowerDirs[len(res.LowerDirs)-1], m.cfg.UserXattr) {
			break // OCI: the layers below are hidden entirely (overlayfs ignores a root's opaque xattr)
		}
	}
	for _, pad := range []string{"_", "__"}[:max(0, 2-len(ids))] {
		ids = append(ids, pad)
		res.LowerDirs = append(res.LowerDirs, m.path("l", pad))
	}
	res.MountOptions = "lowerdir=" + strings.Join(ids, ":")
	if m.cfg.UserXattr {
		res.MountOptions += ",userxattr"
	}
	return res, nil
}

// ensure returns the extracted layer with one lease taken on it, its bytes
// charged to budget.
func (m *Materializer) ensure(ctx context.Context, l manifest.Layer, origin string, budget *imageBudget) (*layerEntry, error) {
	authorized := false
	for attempt := 0; ; attempt++ {
		e, joined, charged, err := m.ensureOnce(ctx, l, origin, &authorized, budget)
		if err == nil && !charged {
			// Reused, or extracted by another call: its recorded size
			// counts (the lease taken is released by the caller).
			err = budget.reuse(e.size)
			if err != nil {
				err = fmt.Errorf("layer %s: %w", l.Digest(), err)
			}
			return e, err
		}
		if err == nil || !joined || attempt > 0 || ctx.Err() != nil || contentError(err) {
			return e, err
		}
		// The extraction this caller joined failed: the leader's error
		// (its context, a fault of that moment) is not this caller's
		// answer. Try once more, leading a flight of its own if none runs.
	}
}

// contentError reports whether err is a property of the layer's (verified)
// content, which every caller of one flight would meet again (an image's
// budget is not: it is the leader's image).
func contentError(err error) bool {
	return errors.Is(err, ErrInvalidLayer) || layerio.IsLayerLimit(err) ||
		errors.Is(err, manifest.ErrUnknownMediaType)
}

// ensureOnce is one attempt of ensure. joined reports that the caller
// waited for an extraction another caller started, charged that the
// layer's bytes were charged to budget while it was written.
func (m *Materializer) ensureOnce(ctx context.Context, l manifest.Layer, origin string, authorized *bool, budget *imageBudget) (_ *layerEntry, joined, charged bool, _ error) {
	d := l.Digest()
	for {
		m.mu.Lock()
		e := m.layers[d]
		if e == nil {
			break
		}
		if *authorized {
			e.leases++
			m.lru.MoveToFront(e.elem)
			m.mu.Unlock()
			m.met.layerHits.Inc()
			return e, false, false, nil
		}
		// Extracted for someone: this caller gets it only after proving
		// it may have the blob (without the lock: it may download).
		m.mu.Unlock()
		if err := l.Authorize(ctx); err != nil {
			m.met.refused.Inc()
			return nil, false, false, fmt.Errorf("layer %s: not handed out: %w", d, err)
		}
		*authorized = true
		// Look again: the layer may have been evicted meanwhile.
	}
	k := flightKey{digest: d, origin: origin}
	f := m.flights[k]
	if f == nil {
		if m.closed {
			m.mu.Unlock()
			return nil, false, false, fmt.Errorf("overlay: materializer closed: %w", context.Canceled)
		}
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{done: make(chan struct{}), cancel: cancel, budget: budget}
		if len(m.flights) == 0 {
			m.quiet = make(chan struct{})
		}
		m.flights[k] = f
		m.running.Add(1)
		go m.run(fctx, k, f, l)
	} else {
		joined = true
		m.met.collapsed.Inc()
	}
	f.waiters++
	m.mu.Unlock()

	select {
	case <-f.done:
		if f.err != nil {
			return nil, joined, false, f.err
		}
		return f.entry, joined, f.budget == budget, nil // the flight took our lease
	case <-ctx.Done():
		m.mu.Lock()
		defer m.mu.Unlock()
		select {
		case <-f.done:
			if f.err == nil {
				m.unleaseLocked(f.entry)
			}
		default:
			f.waiters--
			if f.waiters == 0 {
				f.cancel()
				m.dropFlightLocked(k, f)
			}
		}
		return nil, joined, false, ctx.Err()
	}
}

// Close stops the extractions in flight and waits until they have ended
// and removed their partial layers. Materialize calls waiting for them,
// and later ones that would start one, fail with an error wrapping
// context.Canceled; extracted layers and leases stay. Close is idempotent
// and always returns nil.
func (m *Materializer) Close() error {
	m.mu.Lock()
	m.closed = true
	for _, f := range m.flights {
		f.cancel()
	}
	m.mu.Unlock()
	m.running.Wait()
	return nil
}

func (m *Materializer) run(ctx context.Context, k flightKey, f *flight, l manifest.Layer) {
	defer m.running.Done()
	defer f.cancel()
	d := k.digest
	start := time.Now()
	tmp, size, sums, err := m.extract(ctx, l, k.origin, f.budget)
	m.met.extractSeconds.Observe(time.Since(start).Seconds())

	m.mu.Lock()
	m.dropFlightLocked(k, f)
	var e *layerEntry
	if err == nil {
		// The flight's own read of the blob (from its origin, verified)
		// authorized its callers: an entry another origin committed
		// meanwhile is theirs too.
		var fresh bool
		if e, fresh, err = m.commitLocked(d, tmp, size); err == nil && fresh {
			// Every change the extraction made is before this (ctime),
			// unless the wall clock stepped back meanwhile: then the layer
			// is taken out and extracted again (see writeManifestLater).
			e.committed = time.Now()
			e.manifestDone = make(chan struct{})
			e.dropped = make(chan struct{})
			m.running.Add(1)
			go m.writeManifestLater(e, sums)
		}
	}
	if err == nil {
		e.leases += f.waiters
		m.lru.MoveToFront(e.elem)
		f.entry = e
		m.met.extractions.WithLabelValues("ok").Inc()
	} else {
		m.met.extractions.WithLabelValues("error").Inc()
	}
	f.err = err
	close(f.done)
	m.mu.Unlock()
	if tmp != "" && err != nil {
		removeAll(tmp)
	}
}

// dropFlightLocked forgets f, the flight of k, if it is still the one
// recorded, and closes m.quiet when no flight is left.
func (m *Materializer) dropFlightLocked(k flightKey, f *flight) {
	if m.flights[k] != f {
		return
	}
	delete(m.flights, k)
	if len(m.flights) == 0 {
		close(m.quiet)
	}
}

// manifestYield is how long a manifest walk waits for the extractions in
// flight to end before it walks anyway (see writeManifestLater).
var manifestYield = 2 * time.Second

// awaitQuiet returns once no extraction is in flight, e is dropped, or
// manifestYield has passed.
func (m *Materializer) awaitQuiet(e *layerEntry) {
	m.mu.Lock()
	q := m.quiet
	busy := len(m.flights) > 0
	m.mu.Unlock()
	if !busy {
		return
	}
	if awaitHook != nil {
		awaitHook()
	}
	t := time.NewTimer(manifestYield)
	defer t.Stop()
	select {
	case <-q:
	case <-e.dropped:
	case <-t.C:
	}
}

// writeManifestLater writes the manifest of e, just committed, from a walk
// of its directory and the file digests its extraction recorded (sums),
// off the path of the Materialize calls waiting for it: they have the
// layer meanwhile, and Verify waits for it (e.manifestDone). The content
// digests are those of the bytes written, and an entry changed after the
// commit (its ctime is later) takes the layer out of service as Verify
// takes a modified one, so the manifest is the layer as extracted. A layer
// evicted meanwhile gets none; a failure is logged and leaves the layer
// unverifiable, as does a crash before the manifest is in place. The walk
// waits until no extraction is in flight (manifestYield at most), so that
// it does not slow down the layers callers still wait for.
func (m *Materializer) writeManifestLater(e *layerEntry, sums fileSums) {
	defer m.running.Done()
	defer close(e.manifestDone)
	if manifestHook != nil {
		manifestHook(e.digest)
	}
	// The walk takes the CPU and disk that the extractions in flight,
	// which callers wait for, would use: it waits for them to end (a
	// caller's other layers, typically), or a while at most.
	m.awaitQuiet(e)
	select {
	case <-e.dropped:
		return // no manifest to write
	default:
	}
	start := time.Now()
	err := safego.Call("overlay: manifest of layer "+string(e.digest), func() error {
		// Beside the manifests (Open removes such leftovers there), not
		// in tmp/, which Cleanup empties.
		mf, err := os.CreateTemp(m.path("meta"), e.hex+manifestSuffix+".*")
		if err != nil {
			return err
		}
		tmp := mf.Name()
		mf.Close()
		os.Remove(tmp) // writeManifest creates it afresh (O_EXCL)
		if err := writeManifest(context.Background(), m.path("layers", e.hex), sums, tmp, e.committed); err != nil {
			return err
		}
		m.mu.Lock()
		if m.layers[e.digest] == e {
			err = os.Rename(tmp, m.manifestPath(e.hex))
		}
		m.mu.Unlock()
		os.Remove(tmp) // left only when evicted meanwhile, or the rename failed
		return err
	})
	if err == nil {
		m.cfg.Logger.Debug("overlay: wrote a layer's manifest", "layer", e.digest, "took", time.Since(start))
		return
	}
	m.mu.Lock()
	gone := m.layers[e.digest] != e
	var trash string
	var leased bool
	var terr error
	if !gone && errors.Is(err, errChangedAfterExtraction) {
		trash, leased, terr = m.takeOutLocked(e)
		if terr == nil {
			e.changed, e.changedLeased = err, leased
		}
	}
	m.mu.Unlock()
	switch {
	case gone:
	case errors.Is(err, errChangedAfterExtraction):
		m.met.extractions.WithLabelValues("changed").Inc()
		m.cfg.Logger.Warn("overlay: an extracted layer changed before its manifest was written; taken out of service", "layer", e.digest, "leased", leased, "err", err, "drop_err", terr)
		if trash != "" {
			removeAll(trash)
		}
	default:
		m.cfg.Logger.Warn("overlay: cannot write the manifest of an extracted layer; it is unverifiable", "layer", e.digest, "err", err)
	}
}

// manifestHook, when not nil, is called at the start of every
// writeManifestLater; awaitHook when awaitQuiet is about to wait;
// verifyWaitHook when Verify is about to wait for a layer's manifest.
// Tests only.
var (
	manifestHook   func(blob.Digest)
	awaitHook      func()
	verifyWaitHook func(blob.Digest)
)

// readahead overlaps producing a layer's tar stream with applying it (off
// only in benchmarks that measure what it brings).
var readahead = true

// extract writes layer l into a new temp dir and returns the dir with the
// bytes of file content written, charged to budget, and the digests of the
// files written (for its manifest, see writeManifestLater). On error no
// dir is left.
func (m *Materializer) extract(ctx context.Context, l manifest.Layer, origin string, budget *imageBudget) (string, int64, fileSums, error) {
	h := l.Digest().Encoded()
	tmp, err := os.MkdirTemp(m.path("tmp"), h[:16]+"-")
	if err != nil {
		return "", 0, nil, fmt.Errorf("layer %s: %w", l.Digest(), err)
	}
	var stats applyStats
	var sums fileSums
	start := time.Now()
	for attempt := 0; ; attempt++ {
		err = safego.Call("overlay: extract layer "+string(l.Digest()), func() (err error) {
			sums = fileSums{}
			stats, err = m.extractInto(ctx, l, origin, tmp, budget, sums)
			return err
		})
		if attempt > 0 || !errors.Is(err, blob.ErrMismatch) || ctx.Err() != nil {
			break
		}
		// The bytes were wrong (a corrupt cached copy, found out by
		// settling the stream): the tier that served them skips and
		// repairs that copy, so read the layer once more.
		m.met.extractions.WithLabelValues("corrupt").Inc()
		removeAll(tmp)
		if err := os.Mkdir(tmp, 0o700); err != nil {
			return "", 0, nil, fmt.Errorf("layer %s: %w", l.Digest(), err)
		}
	}
	m.met.extractBytes.Add(float64(stats.Bytes))
	m.met.extractFiles.Add(float64(stats.Files))
	if err != nil {
		removeAll(tmp)
		return "", 0, nil, fmt.Errorf("layer %s: %w", l.Digest(), err)
	}
	m.cfg.Logger.Debug("overlay: extracted a layer", "layer", l.Digest(), "files", stats.Files, "bytes", stats.Bytes, "took", time.Since(start))
	return tmp, stats.Bytes, sums, nil
}

// extractInto writes layer l, read from origin, into the empty directory
// dir. A layer whose content failed a per-layer limit or was invalid is
// remembered (per digest and origin, layerio.Failures) and fails again at
// once, without being read, until the memory expires.
func (m *Materializer) extractInto(ctx context.Context, l manifest.Layer, origin, dir string, budget *imageBudget, sums fileSums) (applyStats, error) {
	if err := m.failed.Check(l.Digest(), origin); err != nil {
		return applyStats{}, err
	}
	stats, err := m.extractLayer(ctx, l, dir, budget, sums)
	if err != nil && ctx.Err() == nil && (errors.Is(err, ErrInvalidLayer) || layerio.IsLayerLimit(err)) {
		m.failed.Remember(l.Digest(), origin, err)
	}
	return stats, err
}

// Free space the extraction leaves on the file system of Root: the
// smaller of freeReserveMax and freeReservePct percent of its size. Writes
// stop (an error wrapping unix.ENOSPC) when less would remain; free space
// is looked at again after every statfsEvery bytes written.
const (
	freeReserveMax = 256 << 20
	freeReservePct = 2
	statfsEvery    = 16 << 20
)

// chargeFunc returns the applier's write check of one extraction into
// dir (see applyConfig.charge). It holds while writing, not after: the
// bytes the layer writes to disk (holes excluded) stay within
// Config.Budget, as a layer larger than the whole cache can never be kept
// (ErrLimitExceeded, as for MaxLayerBytes), and the file system keeps its
// reserve of free space (an error wrapping unix.ENOSPC).
func (m *Materializer) chargeFunc(dir string) func(int64) error {
	var written int64
	sinceStatfs := int64(statfsEvery)
	return func(n int64) error {
		if m.cfg.Budget > 0 && written+n > m.cfg.Budget {
			return fmt.Errorf("%w: the layer writes more than the overlay budget of %d bytes", ErrLimitExceeded, m.cfg.Budget)
		}
		if sinceStatfs += n; sinceStatfs >= statfsEvery {
			sinceStatfs = 0
			var st unix.Statfs_t
			if err := unix.Statfs(dir, &st); err == nil {
				bs := int64(st.Bsize)
				reserve := min(freeReserveMax, int64(st.Blocks)*bs*freeReservePct/100)
				if avail := int64(st.Bavail) * bs; avail-n < reserve {
					return fmt.Errorf("%w: %d bytes free on the file system of %s, %d kept in reserve", unix.ENOSPC, avail, m.root, reserve)
				}
			}
		}
		written += n
		return nil
	}
}

// extractLayer applies l to dir, charging budget (nil: no image budget)
// and recording the sha256 of every file written in sums (nil: none).
func (m *Materializer) extractLayer(ctx context.Context, l manifest.Layer, dir string, budget *imageBudget, sums fileSums) (applyStats, error) {
	if err := os.Chmod(dir, 0o755); err != nil {
		return applyStats{}, err
	}
	rc, err := layerio.Open(ctx, l, layerio.Limits{MaxBytes: m.cfg.MaxLayerBytes})
	if err != nil {
		return applyStats{}, err
	}
	if readahead {
		// Download, verify and decompress on one goroutine, write files on
		// this one.
		rc = layerio.Readahead(rc, 256<<10, 4)
	}
	defer rc.Close()
	opaque := trustedOpaque
	if m.cfg.UserXattr {
		opaque = userOpaque
	}
	maxBytes := m.cfg.MaxLayerBytes
	if maxBytes == 0 {
		maxBytes = layerio.DefaultMaxBytes
	}
	umask, umaskKnown := processUmask()
	charge := m.chargeFunc(dir)
	var chargeEntry func() error
	if budget != nil {
		layerCharge := charge
		charge = func(n int64) error {
			if err := layerCharge(n); err != nil {
				return err
			}
			return budget.charge(n)
		}
		chargeEntry = budget.entry
	}
	stats, err := applyLayer(ctx, dir, rc, applyConfig{opaqueXattr: opaque, maxEntries: m.cfg.MaxEntries, maxBytes: maxBytes,
		charge: charge, chargeEntry: chargeEntry, sums: sums, privileged: m.privileged, umask: umask, umaskKnown: umaskKnown})
	if err != nil && ctx.Err() == nil && layerio.MaySettle(err) {
		// Wrong bytes (a rotten cached copy) show up as a refused entry or
		// a decompression error long before the digest check at the end:
		// read the rest of the blob to tell them from a bad layer.
		err = layerio.Settle(rc, err)
	}
	if err != nil {
		return stats, err
	}
	if m.cfg.Durable {
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return stats, err
		}
		err = unix.Syncfs(fd)
		unix.Close(fd)
		if err != nil {
			return stats, fmt.Errorf("syncfs: %w", err)
		}
	}
	return stats, nil
}

// commitLocked moves an extracted temp dir into place and indexes it
// (fresh). If the layer is already indexed (a flight that was abandoned
// and restarted), the temp dir is discarded and the existing entry
// returned.
func (m *Materializer) commitLocked(d blob.Digest, tmp string, size int64) (_ *layerEntry, fresh bool, _ error) {
	if e := m.layers[d]; e != nil {
		removeAll(tmp)
		return e, false, nil
	}
	h := d.Encoded()
	dst := m.path("layers", h)
	if err := os.Rename(tmp, dst); err != nil {
		return nil, false, fmt.Errorf("layer %s: commit: %w", d, err)
	}
	e := &layerEntry{digest: d, hex: h, size: size}
	id, err := m.allocID(h)
	if err == nil {
		e.id = id
		err = m.writeMeta(e)
	}
	if err != nil {
		removeAll(dst)
		return nil, false, fmt.Errorf("layer %s: commit: %w", d, err)
	}
	m.ids[id] = d
	e.elem = m.lru.PushFront(e)
	m.layers[d] = e
	m.total += size
	m.met.cachedBytes.Set(float64(m.total))
	m.met.cachedLayers.Set(float64(len(m.layers)))
	return e, true, nil
}

// evict removes unleased layers (a mount lease is a lease), least recently
// used first, until the total fits the budget. With Config.NoEvict it does
// nothing.
func (m *Materializer) evict() {
	if m.cfg.Budget <= 0 || m.cfg.NoEvict {
		return
	}
	m.mu.Lock()
	var trash []string
	for el := m.lru.Back(); el != nil && m.total > m.cfg.Budget; {
		prev := el.Prev()
		if e := el.Value.(*layerEntry); e.leases == 0 {
			if p, err := m.unindexLocked(e); err == nil {
				trash = append(trash, p)
			}
		}
		el = prev
	}
	m.mu.Unlock()
	for _, p := range trash {
		removeAll(p)
	}
}

// unindexLocked forgets e and moves its directory into tmp/ (returned, for
// removal outside the lock).
func (m *Materializer) unindexLocked(e *layerEntry) (string, error) {
	trash, err := os.MkdirTemp(m.path("tmp"), "evict-")
	if err != nil {
		return "", err
	}
	if err := os.Rename(m.path("layers", e.hex), filepath.Join(trash, "l")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		os.Remove(trash)
		return "", err
	}
	os.Remove(filepath.Join(m.mountDir, e.id))
	os.Remove(m.path("meta", e.hex))
	os.Remove(m.manifestPath(e.hex))
	delete(m.ids, e.id)
	delete(m.layers, e.digest)
	if e.dropped != nil {
		close(e.dropped)
	}
	m.lru.Remove(e.elem)
	m.total -= e.size
	m.met.evictions.Inc()
	m.met.cachedBytes.Set(float64(m.total))
	m.met.cachedLayers.Set(float64(len(m.layers)))
	return trash, nil
}

// IsMaterialized reports whether every layer of img is extracted (so
// Materialize would do no extraction work). It does no I/O.
func (m *Materializer) IsMaterialized(ctx context.Context, img manifest.Image) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range img.Layers() {
		if m.layers[l.Digest()] == nil {
			return false
		}
	}
	return true
}

// Cleanup removes layer directories no lease holds: those of imgs, or,
// with no images, every unleased one. Layers shared with a leased image
// stay, and so do those of a mount lease (see RecordMount; DropStaleMounts
// first to let go of mounts that are gone). It returns once nothing of
// the dropped layers is left (a manifest being written for one included),
// with the first removal error.
func (m *Materializer) Cleanup(ctx context.Context, imgs ...manifest.Image) error {
	m.mu.Lock()
	var victims []*layerEntry
	if len(imgs) == 0 {
		for el := m.lru.Front(); el != nil; el = el.Next() {
			victims = append(victims, el.Value.(*layerEntry))
		}
	} else {
		for _, img := range imgs {
			for _, l := range img.Layers() {
				if e := m.layers[l.Digest()]; e != nil {
					victims = append(victims, e)
				}
			}
		}
	}
	var trash []string
	var pending []chan struct{}
	var firstErr error
	for _, e := range victims {
		if e.leases > 0 || m.layers[e.digest] != e {
			continue
		}
		p, err := m.unindexLocked(e)
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("overlay: cleanup layer %s: %w", e.digest, err)
			}
			continue
		}
		trash = append(trash, p)
		if e.manifestDone != nil {
			pending = append(pending, e.manifestDone)
		}
	}
	m.mu.Unlock()
	for _, p := range trash {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := removeAll(p); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("overlay: cleanup: %w", err)
		}
	}
	// A manifest still being written for a dropped layer has its temporary
	// file in meta/: the walk ends soon (its directory is gone) and takes
	// the file with it.
	for _, done := range pending {
		select {
		case <-done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return firstErr
}

// Usage is the cache's occupancy.
type Usage struct {
	Layers int
	Bytes  int64
	Leased int // layers held by at least one lease
}

// Usage reports how many layers and bytes the cache holds.
func (m *Materializer) Usage() Usage {
	m.mu.Lock()
	defer m.mu.Unlock()
	u := Usage{Layers: len(m.layers), Bytes: m.total}
	for _, e := range m.layers {
		if e.leases > 0 {
			u.Leased++
		}
	}
	return u
}
