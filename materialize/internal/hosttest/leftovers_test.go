package hosttest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata"
	"github.com/strata-oci/strata/internal/admin"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/materialize/internal/tartest"
	"github.com/strata-oci/strata/registry/credential"
)

// killedConversion leaves in dir/tmp what a killed conversion leaves: a
// temporary image of n bytes, written just now.
func killedConversion(t *testing.T, ext4Dir string, n int) string {
	t.Helper()
	p := filepath.Join(ext4Dir, "tmp", "convert-4242.ext4")
	b := make([]byte, n)
	for i := range b {
		b[i] = 1
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestGCRemovesConversionLeftovers: gc removes a fresh leftover of a
// killed conversion when no other process uses ext4-dir, keeps it while
// another host shares an ext4-dir outside the root, and reports it; du
// reports the ext4 images against ext4-budget.
func TestGCRemovesConversionLeftovers(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		desc       string
		sharedDir  bool // ext4-dir outside the root, used by a second host
		wantRemove bool
	}{
		{"ext4-dir in the root", false, true},
		{"ext4-dir shared with another host", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.NoAdmin = true
			if tt.sharedDir {
				cfg.Ext4Dir = filepath.Join(t.TempDir(), "ext4")
				other := testConfig(t)
				other.NoAdmin = true
				other.Ext4Dir = cfg.Ext4Dir
				h2, err := strata.Open(ctx, other)
				if err != nil {
					t.Fatal(err)
				}
				defer h2.Close()
			}
			h, err := strata.Open(ctx, withMetrics(cfg, prometheus.NewRegistry()))
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			p := killedConversion(t, h.Config().Ext4Dir, 1<<20)
			res, err := h.Admin().GC(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_, serr := os.Stat(p)
			if removed := os.IsNotExist(serr); removed != tt.wantRemove {
				t.Fatalf("leftover removed = %v, want %v (gc: %+v)", removed, tt.wantRemove, res)
			}
			if tt.wantRemove && (res.Ext4TempFiles != 1 || res.Ext4TempBytes < 1<<20) {
				t.Errorf("gc reports %d temp files, %d bytes; want 1 of at least 1 MiB", res.Ext4TempFiles, res.Ext4TempBytes)
			}
			if !tt.wantRemove && res.Ext4TempFiles != 0 {
				t.Errorf("gc reports %d temp files removed, want 0", res.Ext4TempFiles)
			}
			usage, err := h.Admin().Usage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, u := range usage {
				if u.Tier == admin.UsageExt4 {
					found = true
					if u.Budget != int64(strata.Default().Ext4Budget) || u.Error != "" {
						t.Errorf("ext4 usage %+v, want budget %d", u, strata.Default().Ext4Budget)
					}
				}
			}
			if !found {
				t.Error("du has no ext4 record")
			}
		})
	}
}

// TestVerifyOverlayThroughHost: Verify with Overlay reports a tampered
// layer as corrupt and drops it; without Overlay layers are not looked at.
func TestVerifyOverlayThroughHost(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.InProcess(t)
	img := registrytest.Image(t, tartest.New().Dir("etc").File("etc/os-release", []byte("ID=test\n")).Gzip())
	registrytest.Push(t, reg, "app:v1", img, nil)
	cfg := testConfig(t)
	cfg.NoAdmin = true
	h, err := strata.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	fetched, err := h.Fetcher().FetchImage(ctx, reg+"/app:v1", credential.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	fimg := fetched
	res, err := h.Overlay().Materialize(ctx, fimg)
	if err != nil {
		t.Fatal(err)
	}
	res.Lease.Release()
	recs, err := h.Admin().Verify(ctx, admin.VerifyRequest{Overlay: true})
	if err != nil {
		t.Fatal(err)
	}
	layers := 0
	for _, r := range recs {
		if r.Tier == admin.UsageOverlay {
			layers++
			if r.Status != admin.StatusOK {
				t.Errorf("untouched layer: %+v", r)
			}
		}
	}
	if layers != len(fimg.Layers()) {
		t.Fatalf("verify --overlay reported %d layers, want %d", layers, len(fimg.Layers()))
	}
	// Tamper: add a file to the (only) layer.
	if err := os.WriteFile(filepath.Join(res.LowerDirs[0], "planted"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	recs, err = h.Admin().Verify(ctx, admin.VerifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Tier == admin.UsageOverlay {
			t.Fatalf("verify without Overlay looked at a layer: %+v", r)
		}
	}
	recs, err = h.Admin().Verify(ctx, admin.VerifyRequest{Overlay: true})
	if err != nil {
		t.Fatal(err)
	}
	bad := 0
	for _, r := range recs {
		if r.Tier == admin.UsageOverlay {
			if r.Status != admin.StatusCorrupt || !r.Removed || !strings.Contains(r.Error, "added planted") {
				t.Errorf("tampered layer: %+v, want corrupt, removed, naming the planted file", r)
			}
			bad++
		}
	}
	if bad != 1 || h.Overlay().IsMaterialized(ctx, fimg) {
		t.Fatalf("%d corrupt layers reported; layer still extracted: %v", bad, h.Overlay().IsMaterialized(ctx, fimg))
	}
}
