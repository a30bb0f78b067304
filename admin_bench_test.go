package strata

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/admin"
	"github.com/strata-oci/strata/internal/registrytest"
)

// BenchmarkAdmin compares an operation on the host itself with the same
// operation through the admin socket: Stat (a small JSON answer) and Cat of
// a 4 MiB blob (streamed and verified on both sides of the socket).
func BenchmarkAdmin(b *testing.B) {
	ctx := context.Background()
	cfg := Default()
	cfg.Root = b.TempDir()
	cfg.MemoryBudget = 0 // read from disk, not RAM
	h, err := Open(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	c, err := admin.Dial(ctx, cfg.Root)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	data := registrytest.RandomBytes(b, 4<<20)
	d := blob.FromBytes(data)
	if err := h.stack.Put(ctx, d, int64(len(data)), bytes.NewReader(data)); err != nil {
		b.Fatal(err)
	}
	for _, adm := range []struct {
		name string
		a    admin.Admin
	}{{"direct", h.Admin()}, {"socket", c}} {
		b.Run("stat/"+adm.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := adm.a.Stat(ctx, d); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("cat-4MiB/"+adm.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := adm.a.Cat(ctx, d, io.Discard); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
