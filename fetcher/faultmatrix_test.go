package fetcher_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/faulttest"
	"github.com/strata-oci/strata/internal/reapitest"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/tiertest"
)

// faultEnv is faulttest's stack (the tiers a host builds, each behind a
// fault injector, the registry last) holding a private image.
type faultEnv struct {
	*faulttest.Stack
	ref    string
	layers [][]byte
}

// The layer the faults hit: large enough to be streamed through the tee.
const (
	faultLayer     = 1
	faultLayerSize = 2 << 20
)

func newFaultEnv(t *testing.T) *faultEnv {
	t.Helper()
	ctx := context.Background()
	// A private repository: anonymous callers never use the shared tier.
	e := &faultEnv{Stack: faulttest.New(t, t.TempDir(), basicAuthFor("/v2/private/"))}
	e.layers = [][]byte{registrytest.RandomBytes(t, 4<<10), registrytest.RandomBytes(t, faultLayerSize)}
	registrytest.Push(t, e.Proxy.Host(), "private/web:v1", registrytest.Image(t, e.layers...), aliceAuth())
	e.ref = e.Proxy.Host() + "/private/web:v1"

	// Warm every tier: the first fetch reads everything from the registry.
	if err := e.fetch(ctx); err != nil {
		t.Fatalf("warm-up fetch: %v", err)
	}
	e.RequireEverywhere(t, e.digest())
	e.Proxy.Reset()
	return e
}

func (e *faultEnv) digest() blob.Digest { return blob.FromBytes(e.layers[faultLayer]) }

// fetch fetches the image and reads every layer to the end, checking the
// bytes: no call may return wrong bytes without an error.
func (e *faultEnv) fetch(ctx context.Context) error {
	im, err := e.Fetcher.FetchImage(ctx, e.ref, alice())
	if err != nil {
		return err
	}
	for i, l := range im.Layers() {
		rc, err := l.Open(ctx)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		if !bytes.Equal(b, e.layers[i]) {
			return errWrongBytes
		}
	}
	return nil
}

var errWrongBytes = errors.New("wrong bytes served with io.EOF")

// TestFaultMatrix: for each fault on each tier (memory, disk, the shared
// REAPI tier, the registry) while fetching an image and reading its
// layers, no call returns a wrong byte; every call succeeds from the
// remaining sources, except where wrong bytes had already been streamed to
// the caller before the fault could show (a flipped byte is only known at
// the end of the blob): that call fails with a mismatch, never io.EOF, and
// the next succeeds. A bad copy is remembered (strata_tier_bad_copies_total),
// skipped by the next call and repaired, every tier holds correct bytes
// afterwards, and the registry serves the layer exactly as often as the
// table says.
func TestFaultMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("fault matrix: skipped with -short")
	}
	tests := []struct {
		desc   string
		tier   string // the tier serving the layer, which misbehaves
		inject func(t *testing.T, e *faultEnv)
		// firstErr: the first call fails with this error (wrong bytes
		// had reached the caller); nil: it succeeds.
		firstErr error
		// gets is the number of registry GETs of the layer over both
		// calls.
		gets int
		// bad: the tier's copy is marked bad, skipped by the second call
		// and repaired.
		bad bool
	}{
		// memory (fault-injecting wrapper)
		{desc: "memory: read fails after 300 KiB", tier: "memory",
			inject: func(t *testing.T, e *faultEnv) {
				e.Mem.Inject(e.digest(), tiertest.Fault{Kind: tiertest.FaultBreak, At: 300 << 10, Times: 1})
			}},
		{desc: "memory: read ends early (truncated)", tier: "memory",
			inject: func(t *testing.T, e *faultEnv) {
				e.Mem.Inject(e.digest(), tiertest.Fault{Kind: tiertest.FaultTruncate, At: 300 << 10})
			}, bad: true},
		{desc: "memory: open fails", tier: "memory",
			inject: func(t *testing.T, e *faultEnv) {
				e.Mem.Inject(e.digest(), tiertest.Fault{Kind: tiertest.FaultOpenError, Times: 1})
			}},
		{desc: "memory: flipped byte", tier: "memory",
			inject: func(t *testing.T, e *faultEnv) {
				e.Mem.Inject(e.digest(), tiertest.Fault{Kind: tiertest.FaultFlip, At: 12345})
			}, firstErr: blob.ErrMismatch, bad: true},
		{desc: "memory: entry lost", tier: "memory",
			inject: func(t *testing.T, e *faultEnv) {
				e.Mem.Inject(e.digest(), tiertest.Fault{Kind: tiertest.FaultLose, Times: 1})
			}},

		// disk (real damage to the blob file)
		{desc: "disk: flipped byte in the blob file", tier: "disk",
			inject: func(t *testing.T, e *faultEnv) {
				b, err := os.ReadFile(e.BlobFile(e.digest()))
				if err != nil {
					t.Fatal(err)
				}
				b[len(b)/2] ^= 0xff
				if err := os.WriteFile(e.BlobFile(e.digest()), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}, firstErr: blob.ErrMismatch, bad: true},
		{desc: "disk: blob file truncated", tier: "disk",
			inject: func(t *testing.T, e *faultEnv) {
				if err := os.Truncate(e.BlobFile(e.digest()), 500<<10); err != nil {
					t.Fatal(err)
				}
			}, bad: true},
		{desc: "disk: blob file lost", tier: "disk",
			inject: func(t *testing.T, e *faultEnv) {
				if err := os.Remove(e.BlobFile(e.digest())); err != nil {
					t.Fatal(err)
				}
			}},

		// the shared REAPI tier (fault injector in front of the server)
		{desc: "remote: stream aborted after 100 KiB on every try", tier: "remote",
			inject: func(t *testing.T, e *faultEnv) {
				e.Srv.Inject(reapitest.Fault{Call: reapitest.Read, Hash: e.digest().Encoded(), Action: reapitest.Abort, AfterBytes: 100 << 10})
			}, gets: 1},
		{desc: "remote: connection dropped once (the tier resumes)", tier: "remote",
			inject: func(t *testing.T, e *faultEnv) {
				e.Srv.Inject(reapitest.Fault{Call: reapitest.Read, Hash: e.digest().Encoded(), Action: reapitest.Drop, AfterBytes: 300 << 10, Times: 1})
			}},
		{desc: "remote: stalled mid-read", tier: "remote",
			inject: func(t *testing.T, e *faultEnv) {
				in := e.Srv.Inject(reapitest.Fault{Call: reapitest.Read, Hash: e.digest().Encoded(), Action: reapitest.Stall, AfterBytes: 300 << 10, Times: 1})
				t.Cleanup(in.Release)
			}, gets: 1},
		{desc: "remote: UNAVAILABLE on every read", tier: "remote",
			inject: func(t *testing.T, e *faultEnv) {
				e.Srv.Inject(reapitest.Fault{Call: reapitest.Read, Hash: e.digest().Encoded(), Action: reapitest.Fail})
			}, gets: 1},
		{desc: "remote: flipped byte", tier: "remote",
			inject: func(t *testing.T, e *faultEnv) {
				e.Srv.Inject(reapitest.Fault{Call: reapitest.Read, Hash: e.digest().Encoded(), Action: reapitest.Flip, AfterBytes: 1 << 20, Times: 1})
			}, firstErr: blob.ErrMismatch, gets: 1, bad: true},
		{desc: "remote: entry lost", tier: "remote",
			inject: func(t *testing.T, e *faultEnv) { e.Srv.Lose(e.digest().Encoded()) }, gets: 1},

		// the registry (proxy in front of it)
		{desc: "registry: body cut after 300 KiB (the client resumes with a Range)", tier: "registry",
			inject: func(t *testing.T, e *faultEnv) {
				e.Proxy.Inject(registrytest.Fault{Method: "GET", Kind: "blob", TruncateAfter: 300 << 10, Times: 1})
			}, gets: 2},
		{desc: "registry: connection reset", tier: "registry",
			inject: func(t *testing.T, e *faultEnv) {
				e.Proxy.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Abort: true, Times: 1})
			}, gets: 2},
		{desc: "registry: 503 once", tier: "registry",
			inject: func(t *testing.T, e *faultEnv) {
				e.Proxy.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Status: 503, Times: 1})
			}, gets: 2},
		{desc: "registry: flipped byte (no source below it)", tier: "registry",
			inject: func(t *testing.T, e *faultEnv) {
				e.Proxy.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Corrupt: true, Times: 1})
			}, firstErr: blob.ErrMismatch, gets: 2},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			ctx := context.Background()
			e := newFaultEnv(t)
			d := e.digest()
			e.Remove(t, e.digest(), tt.tier)
			tt.inject(t, e)

			err := e.fetch(ctx)
			switch {
			case errors.Is(err, errWrongBytes):
				t.Fatalf("first call: %v", err)
			case tt.firstErr == nil && err != nil:
				t.Fatalf("first call = %v, want success from the remaining sources", err)
			case tt.firstErr != nil && !errors.Is(err, tt.firstErr):
				t.Fatalf("first call = %v, want %v", err, tt.firstErr)
			}

			// The next call succeeds, without reading a bad copy.
			opens := e.Opens(t, e.digest(), tt.tier)
			if err := e.fetch(ctx); err != nil {
				t.Fatalf("second call = %v", err)
			}
			if tt.bad {
				if n := e.Counter(t, tiers.MetricBadCopies, map[string]string{"tier": tt.tier}); n != 1 {
					t.Errorf("%s{tier=%q} = %v, want 1", tiers.MetricBadCopies, tt.tier, n)
				}
				if tt.firstErr != nil {
					if n := e.Opens(t, e.digest(), tt.tier) - opens; n != 0 {
						t.Errorf("the second call opened the bad copy in %s (%v opens)", tt.tier, n)
					}
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
			e.RequireHealed(t, d, e.layers[faultLayer])
		})
	}
}
