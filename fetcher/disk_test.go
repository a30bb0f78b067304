package fetcher_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/registry/credential"
	"github.com/strata-oci/strata/tiers/disk"
)

// A blob corrupted on disk is detected when read, evicted, and read again
// from the registry: the caller never receives wrong bytes.
func TestCorruptDiskBlobIsRefetched(t *testing.T) {
	registries(t, func(t *testing.T, o envOpts) {
		ctx := context.Background()
		root := t.TempDir()
		dt, err := disk.Open(disk.Config{Root: root})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dt.Close() })
		o.bottom = dt
		e := newEnv(t, o)
		want, img := threeLayers(t)
		e.push(t, "app/web:v1", img)
		im, err := e.f.FetchImage(ctx, e.ref("app/web:v1"), credential.Anonymous)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := readLayers(ctx, im); err != nil {
			t.Fatal(err)
		}
		// Only the disk tier keeps the layer; flip one of its bytes on disk.
		d := im.Layers()[1].Digest()
		if err := e.top.Delete(ctx, d); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(root, "blobs", "sha256", d.Encoded()[:2], d.Encoded())
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("stored layer file: %v", err)
		}
		b[len(b)/2] ^= 0xff
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}

		// The first read may fail at EOF (bytes already streamed cannot be
		// taken back) but must never succeed with wrong bytes; the disk tier
		// drops the entry, and the next read refills from the registry.
		e.counter.Reset()
		var got []byte
		for attempt := 0; attempt < 2; attempt++ {
			rc, info, err := im.Layers()[1].(*fetcher.Layer).OpenInfo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			_, err = buf.ReadFrom(rc)
			rc.Close()
			if err == nil {
				if !bytes.Equal(buf.Bytes(), want[1]) {
					t.Fatalf("attempt %d from %s: wrong bytes served without an error", attempt, info.Tier)
				}
				got = buf.Bytes()
				break
			}
			t.Logf("attempt %d from %s: %v", attempt, info.Tier, err)
		}
		if got == nil {
			t.Fatal("no correct read after the corruption was detected")
		}
		if e.counter.Count("GET", "blob") != 1 {
			t.Errorf("registry blob GETs after corruption = %d, want 1 refetch", e.counter.Count("GET", "blob"))
		}
		if _, src, err := readLayers(ctx, im); err != nil || src[1] != "memory" {
			t.Fatalf("after the refetch: %v, served by %v", err, src)
		}
	})
}
