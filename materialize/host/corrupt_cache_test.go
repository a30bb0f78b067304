package host

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/materialize"
	"github.com/strata-oci/strata/materialize/internal/tartest"
	"github.com/strata-oci/strata/registry/credential"
)

// TestCorruptCachedLayerIsRefetched: a layer blob rots in the disk tier so
// that its gzip stream breaks long before the blob ends. Materializing must
// not report "invalid layer" (nor remember the layer as invalid): the
// materializer reads the rest of the blob, learns the bytes were wrong,
// and extracts (or converts) again from the registry (issue 14).
func TestCorruptCachedLayerIsRefetched(t *testing.T) {
	for _, format := range []string{"overlay", "ext4"} {
		t.Run(format, func(t *testing.T) {
			ctx := context.Background()
			var count registrytest.Counter
			reg := registrytest.InProcess(t, count.Wrap)
			// Compressible content: the deflate stream has Huffman blocks,
			// which flipped bytes break at once.
			layer := tartest.New().Dir("data").
				File("data/a", tartest.Content("a", 2<<20)).
				File("data/b", tartest.Content("b", 2<<20)).Gzip()
			img := registrytest.Image(t, tartest.New().File("base", []byte("base")).Gzip(), layer)
			registrytest.Push(t, reg, "app:v1", img, nil)
			cfg := testConfig(t)
			cfg.Memory.Size = 0 // the disk tier serves every cached read
			h, err := Open(ctx, cfg, prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			fimg, err := h.Fetcher().FetchImage(ctx, reg+"/app:v1", credential.Anonymous)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range fimg.Layers() {
				if err := l.Authorize(ctx); err != nil { // reads it into the disk tier
					t.Fatal(err)
				}
			}
			target := fimg.Layers()[1]
			file := filepath.Join(cfg.Disk.Root, "blobs", "sha256", target.Digest().Encoded()[:2], target.Digest().Encoded())
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			for i := len(b) / 4; i < len(b)/4+256; i++ {
				b[i] ^= 0xa5
			}
			if err := os.WriteFile(file, b, 0o600); err != nil {
				t.Fatal(err)
			}
			before := count.Count("GET", "blob")

			switch format {
			case "overlay":
				res, err := h.Overlay().Materialize(ctx, materialize.Fetched(fimg))
				if err != nil {
					t.Fatalf("overlay over a rotten cached layer: %v", err)
				}
				got, err := os.ReadFile(filepath.Join(res.LowerDirs[0], "data", "b"))
				if err != nil || string(got) != string(tartest.Content("b", 2<<20)) {
					t.Errorf("extracted content wrong: %v", err)
				}
				res.Lease.Release()
			case "ext4":
				if _, err := h.Ext4().Materialize(ctx, materialize.Fetched(fimg), nil); err != nil {
					t.Fatalf("ext4 over a rotten cached layer: %v", err)
				}
			}
			// The rotten copy was read once (and dropped); the layer came
			// again from the registry, once.
			if got := count.Count("GET", "blob") - before; got != 1 {
				t.Errorf("registry blob GETs after the corruption: %d, want 1", got)
			}
		})
	}
}
