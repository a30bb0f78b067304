// Package pipeline runs one repetition of one pipeline scenario (fetch,
// overlay and ext4 materialization, concurrent dedup) or of a peer tool on
// the same image. The harness runs each Job in a child process of its own so
// that peak RSS is per scenario and no cache survives between jobs except
// the ones a scenario builds itself, untimed.
//
// Every job reaches the registry through a counting reverse proxy it starts
// on 127.0.0.1, so registry requests per blob can be reported; the peers go
// through the same proxy.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/crane"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/sync/errgroup"

	"github.com/strata-oci/strata"
	"github.com/strata-oci/strata/benchmarks/internal/countproxy"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/internal/admin"
	"github.com/strata-oci/strata/registry/credential"
)

// Scenario names. A peer's name is "<scenario>/peer-<tool>".
const (
	FetchCold       = "fetch-cold"
	FetchColdPeer   = "fetch-cold/peer-crane"
	FetchWarm       = "fetch-warm"
	ResolveWarm     = "resolve-warm" // reported by FetchWarm jobs
	OverlayCold     = "overlay-cold"
	OverlayColdPeer = "overlay-cold/peer-flatten-tar"
	OverlayWarm     = "overlay-warm"
	// OverlayFloor is this machine's floor for overlay-cold: downloading
	// every layer blob from the registry (to nowhere), decompressing every
	// layer (blobs already in memory) and creating the image's files
	// (contents already in memory), all at once, each with GOMAXPROCS
	// workers. OverlayFloorLocal, the floor for overlay-warm, is the last
	// two at once. The jobs also time each of the three alone.
	OverlayFloor           = "overlay-floor"
	OverlayFloorLocal      = "overlay-floor/local"
	OverlayFloorDownload   = "overlay-floor/download"
	OverlayFloorDecompress = "overlay-floor/decompress"
	OverlayFloorCreate     = "overlay-floor/create"
	OverlayPresent         = "overlay-present" // reported by OverlayWarm jobs
	Ext4                   = "ext4"
	Ext4Peer               = "ext4/peer-mke2fs"
	// Ext4Cold is FetchImage and ext4 conversion with empty tiers (layers
	// stream from the registry); its peer is the classic route from the
	// registry: the flattening export piped into tar -x, then mke2fs -d.
	Ext4Cold     = "ext4-cold"
	Ext4ColdPeer = "ext4-cold/peer-classic"
	// FetchReapiHit is fetch-cold's work (FetchImage, every layer read to
	// the end) by an executor with empty local tiers over a shared REAPI
	// tier that holds the image (Job.Remote): a cache hit from the shared
	// tier. It must download no blob from the registry (checked).
	FetchReapiHit = "fetch-reapi-hit"
	// Ext4ReapiDownload is ext4's Materialize by an executor with empty
	// local tiers over a shared REAPI tier that holds the derived image:
	// the image is downloaded, not converted (checked).
	Ext4ReapiDownload = "ext4-reapi-download"
	Dedup             = "dedup"
	// Prime is not a measurement: it fills Job.CacheDir (a disk tier holding
	// the image, tag and access proof) and Job.LayoutDir (an OCI layout of
	// the image) for the warm scenarios and the ext4 peer.
	Prime = "prime"
	// PrimeRemote is not a measurement either: through an executor over
	// the shared REAPI tier (Job.Remote) it fetches the image from the
	// registry and converts it to ext4, and waits until the shared tier
	// holds the layers and the derived image.
	PrimeRemote = "prime-remote"
)

// Scenarios lists every scenario in the order the harness interleaves them:
// each Strata scenario next to its peer.
var Scenarios = []string{FetchCold, FetchColdPeer, FetchReapiHit, FetchWarm, OverlayCold, OverlayColdPeer, OverlayFloor, OverlayWarm, Ext4, Ext4Peer, Ext4ReapiDownload, Ext4Cold, Ext4ColdPeer, Dedup}

// NeedsRemote lists the scenarios that need a shared REAPI tier primed
// with the image (see PrimeRemote).
var NeedsRemote = []string{FetchReapiHit, Ext4ReapiDownload}

// FloorOf maps a Strata scenario to the floor it is compared with.
var FloorOf = map[string]string{OverlayCold: OverlayFloor, OverlayWarm: OverlayFloorLocal}

// PeerOf maps a peer scenario to the Strata scenario it is compared with.
var PeerOf = map[string]string{FetchColdPeer: FetchCold, OverlayColdPeer: OverlayCold, Ext4Peer: Ext4, Ext4ColdPeer: Ext4Cold}

// Goal is a target of issue 18's acceptance: Scenario's median over
// Versus's median on the same image, measured in the same run, at most
// Max; and, when MaxRSSMiB is set, Scenario's peak RSS at most that.
type Goal struct {
	Name      string
	Scenario  string
	Versus    string
	Max       float64
	MaxRSSMiB int64
}

// Goals are checked on every image that ran both sides.
var Goals = []Goal{
	{Name: "fetch cold vs the ggcr pull", Scenario: FetchCold, Versus: FetchColdPeer, Max: 1.0},
	{Name: "overlay cold vs the export piped into tar -x", Scenario: OverlayCold, Versus: OverlayColdPeer, Max: 0.5},
	{Name: "overlay cold vs the floor", Scenario: OverlayCold, Versus: OverlayFloor, Max: 1.3},
	{Name: "ext4 cold vs the classic route (export, tar -x, mke2fs -d)", Scenario: Ext4Cold, Versus: Ext4ColdPeer, Max: 0.33, MaxRSSMiB: 256},
	{Name: "ext4 from cached layers vs the classic route from cached layers", Scenario: Ext4, Versus: Ext4Peer, Max: 0.33, MaxRSSMiB: 256},
	{Name: "cache hit from the REAPI tier vs cold from the registry", Scenario: FetchReapiHit, Versus: FetchCold, Max: 0.6},
	{Name: "derived ext4 download from the REAPI tier vs converting it", Scenario: Ext4ReapiDownload, Versus: Ext4, Max: 0.2},
}

// Job is one repetition of one scenario on one image.
type Job struct {
	Scenario string `json:"scenario"`
	// Registry is the registry's "127.0.0.1:port"; Repo is "name:tag".
	Registry string `json:"registry"`
	Repo     string `json:"repo"`
	// Proxy is the "127.0.0.1:port" the job's counting proxy listens on.
	// The image's name includes it, so every job of a run uses the same
	// one: the refs Prime cached (tag, access proof) name that registry.
	Proxy string `json:"proxy"`
	// UncompressedBytes and Files describe the image (for mke2fs sizing).
	UncompressedBytes int64 `json:"uncompressed_bytes"`
	Files             int   `json:"files"`
	// WorkDir is an empty directory the job may fill; the caller removes it.
	WorkDir string `json:"work_dir"`
	// CacheDir is the disk tier Prime filled with the image: fetch-warm,
	// overlay-warm and ext4 start from it (each with a fresh memory tier on
	// top), as an executor restarted with a warm disk cache would.
	CacheDir string `json:"cache_dir"`
	// LayoutDir is the OCI layout Prime wrote: the ext4 peer's cached blobs.
	LayoutDir string `json:"layout_dir"`
	// RefKey signs the fetcher's refs (tag, proof, membership). The jobs of
	// one run share it (the harness draws it at random), so the refs Prime
	// cached are trusted by the warm jobs.
	RefKey []byte `json:"ref_key"`
	// Concurrency is the number of executors of the dedup scenario.
	Concurrency int `json:"concurrency"`
	// WarmSamples bounds the samples of the sub-millisecond scenarios
	// (resolve-warm, overlay-present).
	WarmSamples int `json:"warm_samples"`
	// Remote is the shared REAPI tier's endpoint ("grpc://127.0.0.1:port",
	// instance RemoteInstance) for PrimeRemote and the scenarios in
	// NeedsRemote; the harness serves it for the whole run.
	Remote         string `json:"remote,omitempty"`
	RemoteInstance string `json:"remote_instance,omitempty"`
	// MemoryBudget, when not nil, replaces the default memory tier budget
	// of every executor (0 turns the memory tier off).
	MemoryBudget *int64 `json:"memory_budget,omitempty"`
	// RegistryReadStreams is every executor's strata.Config of that name
	// (0: the default, one GET per blob).
	RegistryReadStreams int `json:"registry_read_streams,omitempty"`
}

// Outcome is what a job measured.
type Outcome struct {
	// Samples are durations in nanoseconds per scenario name: the job's
	// own scenario and the extra ones it measures on the side.
	Samples map[string][]float64 `json:"samples_ns"`
	// BlobGets counts registry GETs per blob digest during the timed part.
	BlobGets map[string]int `json:"blob_gets,omitempty"`
	// Tool says what implemented a peer ("crane binary", "ggcr library").
	Tool string `json:"tool,omitempty"`
	// Note is a free-form remark (counts, sizes).
	Note string `json:"note,omitempty"`
}

// Run runs job.
func Run(ctx context.Context, job Job) (*Outcome, error) {
	px, err := countproxy.Start(job.Registry, job.Proxy)
	if err != nil {
		return nil, err
	}
	defer px.Close()
	e := &env{job: job, px: px, ref: px.Host + "/" + job.Repo, out: &Outcome{Samples: map[string][]float64{}}}
	switch job.Scenario {
	case FetchCold:
		err = e.fetchCold(ctx)
	case FetchColdPeer:
		err = e.cranePull(ctx)
	case FetchWarm:
		err = e.fetchWarm(ctx)
	case OverlayCold:
		err = e.overlayCold(ctx)
	case OverlayColdPeer:
		err = e.flattenTar(ctx)
	case OverlayWarm:
		err = e.overlayWarm(ctx)
	case OverlayFloor:
		err = e.overlayFloor(ctx)
	case Ext4:
		err = e.ext4(ctx)
	case Ext4Peer:
		err = e.mke2fs(ctx)
	case Ext4Cold:
		err = e.ext4Cold(ctx)
	case Ext4ColdPeer:
		err = e.classic(ctx)
	case FetchReapiHit:
		err = e.fetchReapiHit(ctx)
	case Ext4ReapiDownload:
		err = e.ext4ReapiDownload(ctx)
	case Dedup:
		err = e.dedup(ctx)
	case Prime:
		err = e.prime(ctx)
	case PrimeRemote:
		err = e.primeRemote(ctx)
	default:
		err = fmt.Errorf("pipeline: unknown scenario %q", job.Scenario)
	}
	if err != nil {
		return nil, fmt.Errorf("pipeline: %s: %w", job.Scenario, err)
	}
	return e.out, nil
}

type env struct {
	job Job
	px  *countproxy.Proxy
	ref string
	out *Outcome
}

func (e *env) add(name string, d time.Duration) {
	e.out.Samples[name] = append(e.out.Samples[name], float64(d.Nanoseconds()))
}

// LogEnv names the environment variable that, when set, gives every
// job's executor a debug logger on its stderr (which the harness passes
// on).
const LogEnv = "STRATA_HARNESS_LOG"

// options of one executor's host beyond those every job shares.
type options struct {
	// noMemory turns the memory tier off (Prime fills the disk tier
	// alone).
	noMemory bool
	// overlayRoot and ext4Dir are where layers are extracted and ext4
	// images handed out (default under the root). A job over the shared
	// primed cache puts them in its own WorkDir, so that every repetition
	// extracts or converts again.
	overlayRoot, ext4Dir string
	// remote puts the shared REAPI tier (Job.Remote) under the local
	// tiers, open to anonymous callers (the harness's caller).
	remote bool
}

// open opens one Strata executor through strata.Open, the assembly an
// executor ships with: the default configuration (memory tier, budgets,
// per-blob caps) over the disk root dir, with loopback registries allowed,
// the run's identity key (so the refs Prime cached are trusted by the warm
// jobs), TTLs that outlast a run (so what Prime cached stays warm) and no
// admin socket.
func (e *env) open(ctx context.Context, dir string, o options) (*strata.Host, error) {
	cfg := strata.Default()
	cfg.Root = dir
	cfg.AllowCIDRs = []string{"127.0.0.0/8"}
	cfg.IdentityKey = credential.NewSecretKey(e.job.RefKey)
	cfg.TagTTL, cfg.ProofTTL = strata.Duration(time.Hour), strata.Duration(time.Hour)
	cfg.NoAdmin = true
	cfg.OverlayRoot, cfg.Ext4Dir = o.overlayRoot, o.ext4Dir
	if os.Getenv(LogEnv) != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if e.job.MemoryBudget != nil {
		cfg.MemoryBudget = strata.Size(*e.job.MemoryBudget)
	}
	if o.noMemory {
		cfg.MemoryBudget = 0
	}
	cfg.RegistryReadStreams = e.job.RegistryReadStreams
	if o.remote {
		if e.job.Remote == "" {
			return nil, errors.New("no shared REAPI tier (Job.Remote)")
		}
		cfg.RemoteEndpoint, cfg.RemoteInstance = e.job.Remote, e.job.RemoteInstance
		cfg.RemoteAnonymousShared = true
	}
	return strata.Open(ctx, cfg)
}

// fetchAll fetches the image and reads every layer to the end (at most 4 at
// once), verified, through the tiers.
func fetchAll(ctx context.Context, f *fetcher.Fetcher, ref string) (*fetcher.Image, error) {
	img, err := f.FetchImage(ctx, ref, credential.Anonymous)
	if err != nil {
		return nil, err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, l := range img.Layers() {
		g.Go(func() error {
			rc, err := l.Open(gctx)
			if err != nil {
				return err
			}
			defer rc.Close()
			n, err := io.Copy(io.Discard, rc)
			if err == nil && n != l.Size() {
				err = fmt.Errorf("layer %s: read %d bytes, want %d", l.Digest(), n, l.Size())
			}
			return err
		})
	}
	return img, g.Wait()
}

func (e *env) fetchCold(ctx context.Context) error {
	h, err := e.open(ctx, filepath.Join(e.job.WorkDir, "tiers"), options{})
	if err != nil {
		return err
	}
	defer h.Close()
	t0 := time.Now()
	if _, err := fetchAll(ctx, h.Fetcher(), e.ref); err != nil {
		return err
	}
	e.add(FetchCold, time.Since(t0))
	e.out.BlobGets = e.px.BlobGets()
	return nil
}

// prime fills CacheDir and LayoutDir (see Job). It fetches through a
// host without the memory tier (the disk tier alone), waits until the tier
// holds everything the image needs (write-backs into tiers may finish after
// the reader's EOF), and checks that after reopening.
func (e *env) prime(ctx context.Context) error {
	h, err := e.open(ctx, e.job.CacheDir, options{noMemory: true})
	if err != nil {
		return err
	}
	if _, err := fetchAll(ctx, h.Fetcher(), e.ref); err != nil {
		h.Close()
		return err
	}
	if err := waitCached(ctx, h.Fetcher(), e.ref); err != nil {
		h.Close()
		return err
	}
	if err := h.Close(); err != nil {
		return err
	}
	x, err := e.warmExecutor(ctx, options{})
	if err != nil {
		return err
	}
	err = waitCached(ctx, x.Fetcher(), e.ref)
	if cerr := x.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("after reopening the primed cache: %w", err)
	}
	img, err := e.pull()
	if err != nil {
		return err
	}
	return writeLayout(img, e.job.LayoutDir)
}

// waitCached waits (up to 60 s) until f's tiers hold all of ref.
func waitCached(ctx context.Context, f *fetcher.Fetcher, ref string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok, err := f.IsImageCached(ctx, ref)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s is still not fully cached 60 s after the fetch", ref)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// warmExecutor is an executor over the disk tier Prime filled.
func (e *env) warmExecutor(ctx context.Context, o options) (*strata.Host, error) {
	if e.job.CacheDir == "" {
		return nil, errors.New("no primed cache (Job.CacheDir)")
	}
	return e.open(ctx, e.job.CacheDir, o)
}

func (e *env) fetchWarm(ctx context.Context) error {
	x, err := e.warmExecutor(ctx, options{})
	if err != nil {
		return err
	}
	defer x.Close()
	t0 := time.Now()
	if _, err := fetchAll(ctx, x.Fetcher(), e.ref); err != nil {
		return err
	}
	e.add(FetchWarm, time.Since(t0))
	for i := 0; i < max(1, e.job.WarmSamples); i++ {
		t0 := time.Now()
		img, err := x.Fetcher().FetchImage(ctx, e.ref, credential.Anonymous)
		if err != nil {
			return err
		}
		e.add(ResolveWarm, time.Since(t0))
		if !img.FromCache {
			return errors.New("warm FetchImage was not answered from the cache")
		}
	}
	if n := e.px.Requests(); n != 0 {
		return fmt.Errorf("warm fetches made %d registry requests (want 0: proof valid, blobs cached): %v", n, e.px.First())
	}
	return nil
}

func (e *env) overlayCold(ctx context.Context) error {
	x, err := e.open(ctx, filepath.Join(e.job.WorkDir, "tiers"), options{})
	if err != nil {
		return err
	}
	defer x.Close()
	m := x.Overlay()
	t0 := time.Now()
	img, err := x.Fetcher().FetchImage(ctx, e.ref, credential.Anonymous)
	if err != nil {
		return err
	}
	res, err := m.Materialize(ctx, img)
	if err != nil {
		return err
	}
	e.add(OverlayCold, time.Since(t0))
	res.Lease.Release()
	e.out.BlobGets = e.px.BlobGets()
	return nil
}

// overlayWarm extracts from the primed cache into an overlay root of the
// job's own.
func (e *env) overlayWarm(ctx context.Context) error {
	x, err := e.warmExecutor(ctx, options{overlayRoot: filepath.Join(e.job.WorkDir, "overlay")})
	if err != nil {
		return err
	}
	defer x.Close()
	m := x.Overlay()
	t0 := time.Now()
	img, err := x.Fetcher().FetchImage(ctx, e.ref, credential.Anonymous)
	if err != nil {
		return err
	}
	mimg := img
	res, err := m.Materialize(ctx, mimg)
	if err != nil {
		return err
	}
	e.add(OverlayWarm, time.Since(t0))
	res.Lease.Release()
	for i := 0; i < max(1, e.job.WarmSamples); i++ {
		t0 := time.Now()
		res, err := m.Materialize(ctx, mimg)
		if err != nil {
			return err
		}
		e.add(OverlayPresent, time.Since(t0))
		res.Lease.Release()
	}
	if n := e.px.Requests(); n != 0 {
		return fmt.Errorf("warm materialization made %d registry requests (want 0)", n)
	}
	return nil
}

// ext4 converts from the primed cache, as the host converts: the derived
// image is stored through the host's tiers (into the primed disk tier) and
// handed out in a directory of the job's own. After the measurement, untimed,
// the derived image is evicted again so that the next repetition converts
// too (its derivation ref, left without its blob, makes the converter
// convert again).
func (e *env) ext4(ctx context.Context) error {
	x, err := e.warmExecutor(ctx, options{overlayRoot: filepath.Join(e.job.WorkDir, "overlay"), ext4Dir: filepath.Join(e.job.WorkDir, "ext4")})
	if err != nil {
		return err
	}
	defer x.Close()
	img, err := x.Fetcher().FetchImage(ctx, e.ref, credential.Anonymous)
	if err != nil {
		return err
	}
	t0 := time.Now()
	res, err := x.Ext4().Materialize(ctx, img, nil)
	if err != nil {
		return err
	}
	e.add(Ext4, time.Since(t0))
	if res.FromCache {
		return errors.New("ext4 conversion was answered from a cache")
	}
	e.out.Note = fmt.Sprintf("image %d bytes", res.Size)
	if n := e.px.Requests(); n != 0 {
		return fmt.Errorf("conversion from cached blobs made %d registry requests", n)
	}
	derived, err := res.Hashed(ctx) // handed out before it was hashed
	if err != nil {
		return err
	}
	if _, err := x.Admin().Evict(ctx, admin.EvictRequest{Digest: derived.String()}); err != nil {
		return fmt.Errorf("evict the derived image for the next repetition: %w", err)
	}
	return nil
}

// dedup runs Concurrency fetches of the image at once through one host:
// one executor serving that many actions that need the same image.
func (e *env) dedup(ctx context.Context) error {
	n := max(2, e.job.Concurrency)
	x, err := e.open(ctx, filepath.Join(e.job.WorkDir, "tiers"), options{})
	if err != nil {
		return err
	}
	defer x.Close()
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = fetchAll(ctx, x.Fetcher(), e.ref)
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	e.add(Dedup, time.Since(t0))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	e.out.BlobGets = e.px.BlobGets()
	e.out.Note = fmt.Sprintf("%d concurrent fetches through one host", n)
	return nil
}

// Peers.

func craneBinary() string {
	p, err := exec.LookPath("crane")
	if err != nil {
		return ""
	}
	return p
}

func (e *env) pull() (v1.Image, error) {
	return crane.Pull(e.ref, crane.Insecure)
}

// writeLayout writes img (every blob read through) to an OCI layout at dir.
func writeLayout(img v1.Image, dir string) error {
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendImage(img)
}

func (e *env) cranePull(ctx context.Context) error {
	dir := filepath.Join(e.job.WorkDir, "layout")
	if bin := craneBinary(); bin != "" {
		e.out.Tool = "crane binary: crane pull --format oci"
		t0 := time.Now()
		if out, err := exec.CommandContext(ctx, bin, "pull", "--insecure", "--format", "oci", e.ref, dir).CombinedOutput(); err != nil {
			return fmt.Errorf("crane pull: %v: %s", err, out)
		}
		e.add(FetchColdPeer, time.Since(t0))
	} else {
		e.out.Tool = "ggcr library (crane binary absent): crane.Pull + layout.Write"
		t0 := time.Now()
		img, err := e.pull()
		if err != nil {
			return err
		}
		if err := writeLayout(img, dir); err != nil {
			return err
		}
		e.add(FetchColdPeer, time.Since(t0))
	}
	e.out.BlobGets = e.px.BlobGets()
	return nil
}

// tarX extracts r into dir with GNU tar.
func tarX(ctx context.Context, r io.Reader, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "tar", "-x", "-f", "-", "-C", dir)
	cmd.Stdin = r
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("tar -x: %v: %s", err, out)
	}
	return nil
}

// exportTo pipes img's flattened filesystem (mutate.Extract) into tar -x.
func exportTo(ctx context.Context, img v1.Image, dir string) error {
	rc := mutate.Extract(img)
	defer rc.Close()
	return tarX(ctx, rc, dir)
}

func (e *env) flattenTar(ctx context.Context) error {
	dir := filepath.Join(e.job.WorkDir, "tree")
	t0 := time.Now()
	tool, err := e.export(ctx, dir)
	if err != nil {
		return err
	}
	e.add(OverlayColdPeer, time.Since(t0))
	e.out.Tool = tool
	e.out.BlobGets = e.px.BlobGets()
	return nil
}

// export extracts the image's flattened filesystem from the registry into
// dir: `crane export | tar -x` when the crane binary is installed, else
// go-containerregistry's library doing the same (crane.Pull +
// mutate.Extract) piped into tar -x. It returns which it used.
func (e *env) export(ctx context.Context, dir string) (tool string, err error) {
	if bin := craneBinary(); bin != "" {
		cmd := exec.CommandContext(ctx, bin, "export", "--insecure", e.ref, "-")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return "", err
		}
		if err := cmd.Start(); err != nil {
			return "", err
		}
		terr := tarX(ctx, stdout, dir)
		if err := errors.Join(terr, cmd.Wait()); err != nil {
			return "", err
		}
		return "crane binary: crane export | tar -x", nil
	}
	img, err := e.pull()
	if err != nil {
		return "", err
	}
	if err := exportTo(ctx, img, dir); err != nil {
		return "", err
	}
	return "ggcr library (crane binary absent): crane.Pull + mutate.Extract | tar -x", nil
}

// mke2fs is the classic route from cached blobs (the OCI layout Prime
// wrote), timed: flatten (mutate.Extract) into tar -x, then mke2fs -d of
// the tree.
func (e *env) mke2fs(ctx context.Context) error {
	bin, err := exec.LookPath("mke2fs")
	if err != nil {
		return errors.New("mke2fs not installed (e2fsprogs)")
	}
	if e.job.LayoutDir == "" {
		return errors.New("no primed layout (Job.LayoutDir)")
	}
	p, err := layout.FromPath(e.job.LayoutDir)
	if err != nil {
		return err
	}
	ii, err := p.ImageIndex()
	if err != nil {
		return err
	}
	im, err := ii.IndexManifest()
	if err != nil || len(im.Manifests) != 1 {
		return fmt.Errorf("layout index: %v (%d manifests)", err, len(im.Manifests))
	}
	cached, err := p.Image(im.Manifests[0].Digest)
	if err != nil {
		return err
	}
	e.out.Tool = "ggcr mutate.Extract | tar -x, then mke2fs -d"
	tree := filepath.Join(e.job.WorkDir, "tree")
	out := filepath.Join(e.job.WorkDir, "classic.ext4")
	t0 := time.Now()
	if err := exportTo(ctx, cached, tree); err != nil {
		return err
	}
	extracted := time.Since(t0)
	if err := e.mkfs(ctx, bin, tree, out); err != nil {
		return err
	}
	total := time.Since(t0)
	e.add(Ext4Peer, total)
	e.out.Note = fmt.Sprintf("extract %.2fs + mke2fs %.2fs", extracted.Seconds(), (total - extracted).Seconds())
	return nil
}

// mkfs makes an ext4 image at out of the tree with mke2fs -d, sized for the
// image (its bytes plus 30%, a block per file, 64 MiB) with two inodes per
// file.
func (e *env) mkfs(ctx context.Context, bin, tree, out string) error {
	sizeK := (e.job.UncompressedBytes*13/10 + int64(e.job.Files)*4096 + 64<<20) >> 10
	args := []string{"-q", "-F", "-t", "ext4", "-b", "4096", "-N", strconv.Itoa(e.job.Files*2 + 1000), "-d", tree, out, strconv.FormatInt(sizeK, 10) + "k"}
	if o, err := exec.CommandContext(ctx, bin, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("mke2fs %s: %v: %s", strings.Join(args, " "), err, o)
	}
	return nil
}

// ext4Cold fetches and converts with empty tiers: the layers stream from
// the registry into the converter, which stores the derived image in the
// job's disk tier and hands it out.
func (e *env) ext4Cold(ctx context.Context) error {
	x, err := e.open(ctx, filepath.Join(e.job.WorkDir, "tiers"), options{})
	if err != nil {
		return err
	}
	defer x.Close()
	t0 := time.Now()
	img, err := x.Fetcher().FetchImage(ctx, e.ref, credential.Anonymous)
	if err != nil {
		return err
	}
	res, err := x.Ext4().Materialize(ctx, img, nil)
	if err != nil {
		return err
	}
	e.add(Ext4Cold, time.Since(t0))
	if res.FromCache {
		return errors.New("cold ext4 conversion was answered from a cache")
	}
	e.out.Note = fmt.Sprintf("image %d bytes", res.Size)
	e.out.BlobGets = e.px.BlobGets()
	return nil
}

// classic is the classic ext4 route from the registry, timed: the
// flattening export (flattenTar's: the crane binary or the ggcr library)
// piped into tar -x, then mke2fs -t ext4 -d of the tree.
func (e *env) classic(ctx context.Context) error {
	bin, err := exec.LookPath("mke2fs")
	if err != nil {
		return errors.New("mke2fs not installed (e2fsprogs)")
	}
	tree := filepath.Join(e.job.WorkDir, "tree")
	out := filepath.Join(e.job.WorkDir, "classic.ext4")
	t0 := time.Now()
	tool, err := e.export(ctx, tree)
	if err != nil {
		return err
	}
	extracted := time.Since(t0)
	if err := e.mkfs(ctx, bin, tree, out); err != nil {
		return err
	}
	total := time.Since(t0)
	e.add(Ext4ColdPeer, total)
	e.out.Tool = tool + ", then mke2fs -t ext4 -d"
	e.out.Note = fmt.Sprintf("extract %.2fs + mke2fs %.2fs", extracted.Seconds(), (total - extracted).Seconds())
	e.out.BlobGets = e.px.BlobGets()
	return nil
}

// Median returns the median of xs (0 for none).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
