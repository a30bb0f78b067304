package hosttest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata"
	"github.com/strata-oci/strata/internal/registrytest"
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
			cfg.MemoryBudget = 0 // the disk tier serves every cached read
			h, err := strata.Open(ctx, withMetrics(cfg, prometheus.NewRegistry()))
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
			file := filepath.Join(cfg.Root, "blobs", "sha256", target.Digest().Encoded()[:2], target.Digest().Encoded())
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
				res, err := h.Overlay().Materialize(ctx, fimg)
				if err != nil {
					t.Fatalf("overlay over a rotten cached layer: %v", err)
				}
				got, err := os.ReadFile(filepath.Join(res.LowerDirs[0], "data", "b"))
				if err != nil || string(got) != string(tartest.Content("b", 2<<20)) {
					t.Errorf("extracted content wrong: %v", err)
				}
				res.Lease.Release()
			case "ext4":
				if _, err := h.Ext4().Materialize(ctx, fimg, nil); err != nil {
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

// TestRottenCopyWithAValidLookingEntry: the rotten bytes of an
// uncompressed layer form a well-formed tar header that the flattener
// refuses (a path escaping the root). That refusal is the copy's fault,
// not the layer's: the conversion settles the stream, finds the mismatch,
// converts again from the registry, and does not remember the layer as
// invalid.
func TestRottenCopyWithAValidLookingEntry(t *testing.T) {
	ctx := context.Background()
	var count registrytest.Counter
	reg := registrytest.InProcess(t, count.Wrap)
	layer := tartest.New().Dir("data").File("data/a", tartest.Content("a", 64<<10)).File("data/b", tartest.Content("b", 1<<20)).Tar()
	img := mutateLayerType(t, registrytest.Image(t, layer))
	registrytest.Push(t, reg, "app:v1", img, nil)
	cfg := testConfig(t)
	cfg.MemoryBudget = 0
	h, err := strata.Open(ctx, withMetrics(cfg, prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	fimg, err := h.Fetcher().FetchImage(ctx, reg+"/app:v1", credential.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	l := fimg.Layers()[0]
	if err := l.Authorize(ctx); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(cfg.Root, "blobs", "sha256", l.Digest().Encoded()[:2], l.Digest().Encoded())
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte("data/b\x00"))
	if i < 0 || i%512 != 0 {
		t.Fatalf("no header for data/b at a block boundary (%d)", i)
	}
	copy(b[i:i+100], append([]byte("../../escape"), make([]byte, 88)...))
	retar(b[i : i+512])
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	before := count.Count("GET", "blob")
	if _, err := h.Ext4().Materialize(ctx, fimg, nil); err != nil {
		t.Fatalf("ext4 over a rotten copy with a well-formed refused entry: %v", err)
	}
	if got := count.Count("GET", "blob") - before; got != 1 {
		t.Errorf("registry blob GETs after the corruption: %d, want 1", got)
	}
}

// retar recomputes the checksum of the tar header h (512 bytes).
func retar(h []byte) {
	copy(h[148:156], []byte("        "))
	var sum int64
	for _, c := range h {
		sum += int64(c)
	}
	copy(h[148:156], []byte(fmt.Sprintf("%06o\x00 ", sum)))
}

// mutateLayerType relabels img's layers as uncompressed tar.
func mutateLayerType(t *testing.T, img v1.Image) v1.Image {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	out := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	out = mutate.ConfigMediaType(out, types.OCIConfigJSON)
	for _, l := range ls {
		b, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(b)
		if err != nil {
			t.Fatal(err)
		}
		if out, err = mutate.AppendLayers(out, static.NewLayer(data, types.OCIUncompressedLayer)); err != nil {
			t.Fatal(err)
		}
	}
	return out
}
