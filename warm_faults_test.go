package strata

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/admin"
	"github.com/strata-oci/strata/internal/reapitest"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry/credential"
)

// TestWarmSucceedsOverFlippedCopies: blobctl fetch (Host.Warm) over a layer
// with one byte flipped in the disk tier, in the shared REAPI tier, or by
// the registry itself succeeds on its first call: the flip is found only at
// the blob's end, the read that consumed it fails, the copy is marked, and
// Warm reads the layer once more from the remaining sources (issue 14). No
// tier keeps wrong bytes.
func TestWarmSucceedsOverFlippedCopies(t *testing.T) {
	for _, where := range []string{"disk", "remote", "registry"} {
		t.Run(where, func(t *testing.T) {
			ctx := context.Background()
			var count registrytest.Counter
			origin := registrytest.InProcess(t, count.Wrap)
			proxy := registrytest.NewProxy(t, origin)
			layer := registrytest.RandomBytes(t, 1<<20)
			img := registrytest.Image(t, layer)
			registrytest.Push(t, origin, "app:v1", img, nil)
			ref := proxy.Host() + "/app:v1"
			d := blob.FromBytes(layer)
			srv := reapitest.NewServer(t, reapitest.Options{})
			open := func() *Host {
				cfg := testConfig(t)
				cfg.MemoryBudget = 0 // reads reach the disk and remote tiers
				cfg.RemoteEndpoint = srv.Endpoint()
				cfg.RemoteInstance = reapitest.Instance
				cfg.RemoteAnonymousShared = true
				cfg.IdentityKey = credential.NewSecretKey([]byte("a fleet key shared by the executors of this test"))
				h, err := Open(ctx, withMetrics(cfg, prometheus.NewRegistry()))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { h.Close() })
				return h
			}
			h := open()
			if where != "registry" {
				if _, err := h.Admin().Warm(ctx, ref, credential.Anonymous, 0, nil); err != nil {
					t.Fatalf("first warm: %v", err)
				}
			}
			switch where {
			case "disk":
				file := filepath.Join(h.cfg.Root, "blobs", "sha256", d.Encoded()[:2], d.Encoded())
				b, err := os.ReadFile(file)
				if err != nil {
					t.Fatal(err)
				}
				b[len(b)/2] ^= 0xff
				if err := os.WriteFile(file, b, 0o600); err != nil {
					t.Fatal(err)
				}
			case "remote":
				h = open() // a second executor: nothing local, the layer in REAPI
				srv.Inject(reapitest.Fault{Call: reapitest.Read, Action: reapitest.Flip, Hash: d.Encoded(), AfterBytes: 600 << 10, Times: 1})
			}
			hooks := &admin.WarmHooks{}
			if where == "registry" {
				// Once the documents are read: the next blob GET is the layer's.
				hooks.Documents = func([]admin.FetchRecord) {
					proxy.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Corrupt: true, Times: 1})
				}
			}
			res, err := h.Admin().Warm(ctx, ref, credential.Anonymous, 0, hooks)
			if err != nil {
				t.Fatalf("warm over a flipped %s copy: %v", where, err)
			}
			for _, r := range res.Blobs {
				if r.Digest == d.String() && r.Bytes != int64(len(layer)) {
					t.Errorf("layer record %+v", r)
				}
			}
			// Every copy this host can see is right now.
			var buf bytes.Buffer
			if _, err := h.Admin().Cat(ctx, d, &buf); err != nil || !bytes.Equal(buf.Bytes(), layer) {
				t.Errorf("cached layer after the warm: %d bytes, %v", buf.Len(), err)
			}
		})
	}
}
