package hosttest

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/internal/admin"
	"github.com/strata-oci/strata/internal/faulttest"
	"github.com/strata-oci/strata/internal/reapitest"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/internal/testenv"
	"github.com/strata-oci/strata/materialize/ext4"
	"github.com/strata-oci/strata/materialize/internal/tartest"
	"github.com/strata-oci/strata/materialize/overlay"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/memory"
	"github.com/strata-oci/strata/tiers/tiertest"
)

// The overlay and ext4 columns of the issue 14 fault matrix (the fetch
// column is fetcher.TestFaultMatrix): the same tier stack and the same
// faults, hit while a materializer consumes the layer's tar stream.

// matFile is the fault layer's file the checks read back.
const matFile = "data/b"

// matLayers returns the image's layer blobs, base first, and the content
// of matFile: gzip layers (compress: true) or uncompressed tars. The fault
// layer holds 3 MiB of hex text, which deflate codes with Huffman blocks:
// a wrong byte breaks the gzip stream where it sits, long before the blob
// ends (random bytes would be stored blocks, where it breaks nothing).
// The blobs are deterministic, so one clean conversion serves every row.
func matLayers(compress bool) (layers [][]byte, content []byte) {
	hexText := func(seed string, n int) []byte {
		return []byte(hex.EncodeToString(tartest.Content(seed, n/2)))
	}
	content = hexText("b", 3<<19)
	base := tartest.New().File("base", []byte("base"))
	top := tartest.New().Dir("data").File("data/a", hexText("a", 3<<19)).File(matFile, content)
	if compress {
		return [][]byte{base.Gzip(), top.Gzip()}, content
	}
	return [][]byte{base.Tar(), top.Tar()}, content
}

// matEnv is faulttest's stack (fetcher.TestFaultMatrix's) with both
// materializers over it, built as strata.Open builds them.
type matEnv struct {
	*faulttest.Stack
	ov     *overlay.Materializer
	conv   *ext4.Converter
	ref    string
	layers [][]byte
}

// The index of the layer the faults hit.
const matFault = 1

func newMatEnv(t *testing.T, v1img v1.Image, layers [][]byte) *matEnv {
	t.Helper()
	ctx := context.Background()
	root := t.TempDir()
	e := &matEnv{Stack: faulttest.New(t, filepath.Join(root, "disk"), registrytest.BasicAuthHandler("alice", "alice-pw")), layers: layers}
	var err error
	if e.ov, err = overlay.New(overlay.Config{Root: filepath.Join(root, "overlay"), Metrics: e.Reg}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.ov.Close() })
	if e.conv, err = ext4.New(ext4.Config{Store: e.Stack.Stack, LocalStore: e.Stack.Stack, WorkDir: filepath.Join(root, "ext4"), Metrics: e.Reg}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.conv.Close() })

	registrytest.Push(t, e.Proxy.Host(), "alice/app:v1", v1img, basicAuth("alice", "alice-pw"))
	e.ref = e.Proxy.Host() + "/alice/app:v1"

	// Warm every tier: the first read takes every layer from the registry.
	im := e.fetchImage(t)
	for i, l := range im.Layers() {
		rc, err := l.Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(b, layers[i]) {
			t.Fatalf("warm-up read of layer %d: %v", i, err)
		}
	}
	e.RequireEverywhere(t, e.digest())
	e.Proxy.Reset()
	return e
}

func (e *matEnv) digest() blob.Digest { return blob.FromBytes(e.layers[matFault]) }

func (e *matEnv) fetchImage(t *testing.T) *fetcher.Image {
	t.Helper()
	im, err := e.Fetcher.FetchImage(context.Background(), e.ref, alice())
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	return im
}

// cleanExt4 returns the digest of the ext4 image of v1img converted from
// its own bytes (no tier, no fault), once per layer kind.
var cleanExt4 struct {
	sync.Mutex
	m map[bool]blob.Digest
}

func cleanExt4Digest(t *testing.T, compress bool, v1img v1.Image) blob.Digest {
	t.Helper()
	cleanExt4.Lock()
	defer cleanExt4.Unlock()
	if d, ok := cleanExt4.m[compress]; ok {
		return d
	}
	c, err := ext4.New(ext4.Config{Store: memory.New(memory.Config{Name: "clean"}), WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := c.Materialize(context.Background(), tartest.FromV1(t, v1img), nil)
	if err != nil {
		t.Fatalf("clean conversion: %v", err)
	}
	if cleanExt4.m == nil {
		cleanExt4.m = map[bool]blob.Digest{}
	}
	cleanExt4.m[compress] = res.Digest
	return res.Digest
}

// TestFaultMatrixMaterialize: for each fault on each tier (memory, disk,
// the shared REAPI tier behind the fault proxy, the registry behind its
// proxy) while the overlay materializer extracts, or the ext4 converter
// converts, an image whose layer that tier serves (gzip and uncompressed
// tar layers): the first call succeeds, flipped bytes included (the
// materializer settles the broken stream, learns the copy was bad and
// reads the layer once more, from the remaining sources); the extracted
// file, or the whole ext4 image, is that of a clean conversion; a bad copy
// is remembered, not read again by that retry, and repaired; no tier holds
// wrong bytes afterwards; and the registry serves the layer exactly as
// often as the table says.
func TestFaultMatrixMaterialize(t *testing.T) {
	if testing.Short() {
		t.Skip("fault matrix: skipped with -short")
	}
	tests := []struct {
		desc   string
		tier   string // the tier serving the layer, which misbehaves
		inject func(t *testing.T, e *matEnv)
		// wrong: wrong bytes reach the materializer (a flipped byte), so
		// it reads the layer a second time.
		wrong bool
		// bad: the tier's copy is marked bad, skipped and repaired.
		bad bool
		// gets is the number of registry GETs of the layer.
		gets int
	}{
		// memory (fault-injecting wrapper)
		{desc: "memory: read fails after 300 KiB", tier: admin.TierMemory,
			inject: func(t *testing.T, e *matEnv) {
				e.Mem.Inject(e.digest(), tiertest.Fault{Kind: tiertest.FaultBreak, At: 300 << 10, Times: 1})
			}},
		{desc: "memory: read ends early (truncated)", tier: admin.TierMemory,
			inject: func(t *testing.T, e *matEnv) {
				e.Mem.Inject(e.digest(), tiertest.Fault{Kind: tiertest.FaultTruncate, At: 300 << 10})
			}, bad: true},
		{desc: "memory: open fails", tier: admin.TierMemory,
			inject: func(t *testing.T, e *matEnv) {
				e.Mem.Inject(e.digest(), tiertest.Fault{Kind: tiertest.FaultOpenError, Times: 1})
			}},
		{desc: "memory: flipped byte", tier: admin.TierMemory,
			inject: func(t *testing.T, e *matEnv) {
				e.Mem.Inject(e.digest(), tiertest.Fault{Kind: tiertest.FaultFlip, At: 600 << 10})
			}, wrong: true, bad: true},
		{desc: "memory: entry lost", tier: admin.TierMemory,
			inject: func(t *testing.T, e *matEnv) {
				e.Mem.Inject(e.digest(), tiertest.Fault{Kind: tiertest.FaultLose, Times: 1})
			}},

		// disk (real damage to the blob file)
		{desc: "disk: flipped byte in the blob file", tier: admin.TierDisk,
			inject: func(t *testing.T, e *matEnv) {
				b, err := os.ReadFile(e.BlobFile(e.digest()))
				if err != nil {
					t.Fatal(err)
				}
				b[len(b)/2] ^= 0xff
				if err := os.WriteFile(e.BlobFile(e.digest()), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}, wrong: true, bad: true},
		{desc: "disk: blob file truncated", tier: admin.TierDisk,
			inject: func(t *testing.T, e *matEnv) {
				if err := os.Truncate(e.BlobFile(e.digest()), 500<<10); err != nil {
					t.Fatal(err)
				}
			}, bad: true},
		{desc: "disk: blob file lost", tier: admin.TierDisk,
			inject: func(t *testing.T, e *matEnv) {
				if err := os.Remove(e.BlobFile(e.digest())); err != nil {
					t.Fatal(err)
				}
			}},

		// the shared REAPI tier (fault injector in front of the server)
		{desc: "remote: stream aborted after 100 KiB on every try", tier: admin.TierRemote,
			inject: func(t *testing.T, e *matEnv) {
				e.Srv.Inject(reapitest.Fault{Call: reapitest.Read, Hash: e.digest().Encoded(), Action: reapitest.Abort, AfterBytes: 100 << 10})
			}, gets: 1},
		{desc: "remote: connection dropped once (the tier resumes)", tier: admin.TierRemote,
			inject: func(t *testing.T, e *matEnv) {
				e.Srv.Inject(reapitest.Fault{Call: reapitest.Read, Hash: e.digest().Encoded(), Action: reapitest.Drop, AfterBytes: 300 << 10, Times: 1})
			}},
		{desc: "remote: stalled mid-read", tier: admin.TierRemote,
			inject: func(t *testing.T, e *matEnv) {
				in := e.Srv.Inject(reapitest.Fault{Call: reapitest.Read, Hash: e.digest().Encoded(), Action: reapitest.Stall, AfterBytes: 300 << 10, Times: 1})
				t.Cleanup(in.Release)
			}, gets: 1},
		{desc: "remote: UNAVAILABLE on every read", tier: admin.TierRemote,
			inject: func(t *testing.T, e *matEnv) {
				e.Srv.Inject(reapitest.Fault{Call: reapitest.Read, Hash: e.digest().Encoded(), Action: reapitest.Fail})
			}, gets: 1},
		{desc: "remote: flipped byte", tier: admin.TierRemote,
			inject: func(t *testing.T, e *matEnv) {
				e.Srv.Inject(reapitest.Fault{Call: reapitest.Read, Hash: e.digest().Encoded(), Action: reapitest.Flip, AfterBytes: 600 << 10, Times: 1})
			}, wrong: true, bad: true, gets: 1},
		{desc: "remote: entry lost", tier: admin.TierRemote,
			inject: func(t *testing.T, e *matEnv) { e.Srv.Lose(e.digest().Encoded()) }, gets: 1},

		// the registry (proxy in front of it)
		{desc: "registry: body cut after 300 KiB (the client resumes with a Range)", tier: "registry",
			inject: func(t *testing.T, e *matEnv) {
				e.Proxy.Inject(registrytest.Fault{Method: "GET", Kind: "blob", TruncateAfter: 300 << 10, Times: 1})
			}, gets: 2},
		{desc: "registry: connection reset", tier: "registry",
			inject: func(t *testing.T, e *matEnv) {
				e.Proxy.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Abort: true, Times: 1})
			}, gets: 2},
		{desc: "registry: 503 once", tier: "registry",
			inject: func(t *testing.T, e *matEnv) {
				e.Proxy.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Status: 503, Times: 1})
			}, gets: 2},
		{desc: "registry: flipped first byte (no source below it)", tier: "registry",
			inject: func(t *testing.T, e *matEnv) {
				e.Proxy.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Corrupt: true, Times: 1})
			}, wrong: true, gets: 2},
	}
	for _, kind := range []struct {
		name     string
		compress bool
	}{{"gzip", true}, {"tar", false}} {
		layers, content := matLayers(kind.compress)
		v1img := tartest.Image(t, layers...)
		for _, format := range []string{"overlay", "ext4"} {
			for _, tt := range tests {
				t.Run(format+"/"+kind.name+"/"+tt.desc, func(t *testing.T) {
					var want blob.Digest
					if format == "ext4" {
						want = cleanExt4Digest(t, kind.compress, v1img)
					}
					ctx := context.Background()
					e := newMatEnv(t, v1img, layers)
					d := e.digest()
					im := e.fetchImage(t)
					e.Remove(t, e.digest(), tt.tier)
					tt.inject(t, e)
					opens := e.Opens(t, e.digest(), tt.tier)

					// The first call succeeds, with the right content.
					switch format {
					case "overlay":
						res, err := e.ov.Materialize(ctx, im)
						if err != nil {
							t.Fatalf("overlay: first call = %v, want success from the remaining sources", err)
						}
						got, err := os.ReadFile(filepath.Join(res.LowerDirs[0], matFile))
						if err != nil || !bytes.Equal(got, content) {
							t.Errorf("extracted %s: wrong content (%d bytes, err %v)", matFile, len(got), err)
						}
						res.Lease.Release()
					case "ext4":
						res, err := e.conv.Materialize(ctx, im, nil)
						if err != nil {
							t.Fatalf("ext4: first call = %v, want success from the remaining sources", err)
						}
						if res.FromCache {
							t.Fatalf("ext4: the image came from a cache: nothing was converted")
						}
						if res.Digest != want {
							t.Errorf("ext4 image %s, want %s (a clean conversion)", res.Digest, want)
						}
						fsck := testenv.RequireBinary(t, "e2fsck", "the ext4 image of the fault matrix")
						if out, err := exec.Command(fsck, "-fn", res.Path).CombinedOutput(); err != nil {
							t.Errorf("e2fsck -fn: %v\n%s", err, out)
						}
					}

					// Wrong bytes made the materializer read the layer
					// once more; nothing else did.
					retries := e.Counter(t, "strata_overlay_layer_extractions_total", map[string]string{"result": "corrupt"}) +
						e.Counter(t, "strata_ext4_materialize_total", map[string]string{"outcome": "corrupt"})
					if want := map[bool]float64{true: 1}[tt.wrong]; retries != want {
						t.Errorf("reads again after wrong bytes = %v, want %v", retries, want)
					}
					if tt.bad {
						if n := e.Counter(t, tiers.MetricBadCopies, map[string]string{"tier": tt.tier}); n != 1 {
							t.Errorf("%s{tier=%q} = %v, want 1", tiers.MetricBadCopies, tt.tier, n)
						}
						// The second read (the stack's failover, or the
						// materializer's retry) skipped the bad copy.
						if n := e.Opens(t, e.digest(), tt.tier) - opens; n != 1 {
							t.Errorf("the call opened the layer in %s %v times, want 1 (the bad copy skipped after)", tt.tier, n)
						}
						e.WaitRepaired(t, tt.tier)
					} else if n := e.Counter(t, tiers.MetricBadCopies, nil); n != 0 {
						t.Errorf("%s = %v, want 0", tiers.MetricBadCopies, n)
					}
					if n := e.Proxy.Count("GET", "blob"); n != tt.gets {
						t.Errorf("registry blob GETs = %d, want %d", n, tt.gets)
					}

					// No tier holds wrong bytes, and the local tiers hold the
					// layer again.
					e.RequireHealed(t, d, e.layers[matFault])
				})
			}
		}
	}
}
