package fetcher

import (
	"context"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/memory"
)

// Membership is recorded only for digests the origin vouched for, which are
// the digests announced to the fetch's source (the target the origin
// resolved, and what verified documents name). A digest that was never
// announced gains no membership, whoever calls served or filled with it.
func TestServedRecordsOnlyVouchedDigests(t *testing.T) {
	ctx := context.Background()
	mem := memory.New(memory.Config{Name: "memory"})
	t.Cleanup(func() { mem.Close() })
	st := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: mem}}})
	client, err := registry.New(registry.Config{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(Config{Store: st, Registry: client})
	if err != nil {
		t.Fatal(err)
	}
	repo, err := registry.ParseRepository("registry.example/app")
	if err != nil {
		t.Fatal(err)
	}
	ba := &blobAccess{f: f, st: st, repo: repo, src: newSource(client, repo, nil)}
	vouched, layer, stray := blob.FromBytes([]byte("manifest")), blob.FromBytes([]byte("layer")), blob.FromBytes([]byte("stray"))
	ba.src.expect(vouched, 8, "application/vnd.oci.image.manifest.v1+json")
	ba.src.expect(layer, 5, "")

	ba.served(ctx, vouched, 8, "application/vnd.oci.image.manifest.v1+json")
	ba.filled(ctx, layer)
	ba.served(ctx, stray, 5, "")
	ba.filled(ctx, stray)

	for _, tc := range []struct {
		desc string
		d    blob.Digest
		want bool
	}{
		{"announced document, served", vouched, true},
		{"announced blob, filled", layer, true},
		{"never announced", stray, false},
	} {
		if got := ba.member(ctx, tc.d); got != tc.want {
			t.Errorf("%s: member(%s) = %v, want %v", tc.desc, tc.d, got, tc.want)
		}
	}
}
