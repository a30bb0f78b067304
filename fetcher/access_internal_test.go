package fetcher

import (
	"context"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/memory"
)

// fill re-checks the membership inside its flight: a caller that decided
// to fill (it was no member when it looked) but leads a flight after
// another fill proved the membership reads nothing from the registry (here
// one on a closed loopback port: any request would fail the call).
func TestFillRechecksMembershipInside(t *testing.T) {
	ctx := context.Background()
	mem := memory.New(memory.Config{Name: "memory"})
	t.Cleanup(func() { mem.Close() })
	st := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: mem}}})
	client, err := registry.New(registry.Config{AllowCIDRs: []string{"127.0.0.0/8"}, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(Config{Store: st, Registry: client})
	if err != nil {
		t.Fatal(err)
	}
	repo, err := registry.ParseRepository("127.0.0.1:1/app")
	if err != nil {
		t.Fatal(err)
	}
	ba := &blobAccess{f: f, st: st, repo: repo}
	d := blob.FromBytes([]byte("layer"))
	if ba.member(ctx, d) {
		t.Fatal("member before any fill")
	}
	// Another caller's fill has just proved it.
	f.putRef(ctx, st, memberKey(repo, d), blob.Ref{Digest: d, Size: 5})

	rc, _, err := ba.fill(ctx, d, 5, "")
	if err != nil || rc != nil {
		t.Fatalf("fill after the membership was proved = reader %v, %v; want neither (no registry read)", rc != nil, err)
	}
	// And the flight is over: the key is free.
	if _, leader := f.fills.Lead(memberKey(repo, d).Name); !leader {
		t.Fatal("the fill's flight was not ended")
	}
}
