package main

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/fakes"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"

	"github.com/strata-oci/strata/internal/admin"
)

// startREAPI serves the SDK's fake CAS and ActionCache (instance "instance")
// on loopback and returns its grpc:// endpoint.
func startREAPI(t *testing.T) string {
	t.Helper()
	cas, ac := fakes.NewCAS(), fakes.NewActionCache()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	bsgrpc.RegisterByteStreamServer(srv, cas)
	repb.RegisterContentAddressableStorageServer(srv, cas)
	repb.RegisterActionCacheServer(srv, ac)
	repb.RegisterCapabilitiesServer(srv, fakes.NewExec(t, ac, cas))
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return "grpc://" + lis.Addr().String()
}

// TestSharedRemoteTier: two hosts (two roots) share one REAPI server through
// the --remote flags. The second reads the layers from the remote tier and
// downloads the ext4 image the first converted.
func TestSharedRemoteTier(t *testing.T) {
	endpoint := startREAPI(t)
	f := newFixture(t, 32<<10, 2)
	// The two hosts are one fleet: they share the key that signs derived
	// images' refs (without it the second host would convert again).
	fleet := filepath.Join(t.TempDir(), "fleet.yaml")
	if err := os.WriteFile(fleet, []byte("identity-key: \"test fleet key shared by both hosts\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	remote := []string{"--config", fleet, "--remote", endpoint, "--remote-instance", "instance", "--remote-anonymous-shared"}
	a := append(f.args(remote...), "--root", filepath.Join(t.TempDir(), "a"))
	b := append(f.args(remote...), "--root", filepath.Join(t.TempDir(), "b"))
	out := filepath.Join(t.TempDir(), "img.ext4")

	ra := decode[ext4Result](t, must(t, append(a, "materialize", f.ref, "--format", "ext4", "--out", out, "--json")...))
	if ra.FromCache {
		t.Fatalf("first host: %+v, want a conversion", ra)
	}
	must(t, append(b, "gc")...) // creates b's root: inspection never does
	du := decode[[]admin.UsageRecord](t, must(t, append(b, "du", "--json")...))
	if len(du) != 6 || du[2].Tier != admin.TierRemote || !du[2].Shared || du[2].Error == "" {
		t.Fatalf("du with a remote tier: %+v", du)
	}
	res := decode[fetchResult](t, must(t, append(b, "fetch", f.ref, "--json")...))
	digests, _ := f.layers(t)
	from := map[string]string{}
	for _, r := range res.Blobs {
		from[r.Digest] = r.Source
	}
	for _, d := range digests {
		if from[d] != admin.TierRemote {
			t.Errorf("second host read layer %s from %q, want remote", d, from[d])
		}
	}
	rb := decode[ext4Result](t, must(t, append(b, "materialize", f.ref, "--format", "ext4", "--out", out, "--json")...))
	if !rb.FromCache || rb.Ext4 != ra.Ext4 {
		t.Fatalf("second host: %+v, want the first host's image %s from the remote tier", rb, ra.Ext4)
	}
}

// Without --remote-anonymous-shared, an anonymous caller's fetch and ext4
// conversion write nothing to the shared tier: a second host that may read
// the shared tier finds neither the layers nor the derived image there.
func TestAnonymousWritesNothingShared(t *testing.T) {
	endpoint := startREAPI(t)
	f := newFixture(t, 32<<10, 2)
	out := filepath.Join(t.TempDir(), "img.ext4")
	a := append(f.args("--remote", endpoint, "--remote-instance", "instance"), "--root", filepath.Join(t.TempDir(), "a"))
	b := append(f.args("--remote", endpoint, "--remote-instance", "instance", "--remote-anonymous-shared"), "--root", filepath.Join(t.TempDir(), "b"))

	if ra := decode[ext4Result](t, must(t, append(a, "materialize", f.ref, "--format", "ext4", "--out", out, "--json")...)); ra.FromCache {
		t.Fatalf("first host: %+v, want a conversion", ra)
	}
	res := decode[fetchResult](t, must(t, append(b, "fetch", f.ref, "--json")...))
	for _, r := range res.Blobs {
		if r.Source == admin.TierRemote {
			t.Errorf("blob %s found in the shared tier after an anonymous fetch", r.Digest)
		}
	}
	if rb := decode[ext4Result](t, must(t, append(b, "materialize", f.ref, "--format", "ext4", "--out", out, "--json")...)); rb.FromCache {
		t.Fatalf("second host took %+v from a cache; the anonymous conversion must not have been shared", rb)
	}
}

// Hosts with different identity keys do not follow each other's derived
// image refs in a shared tier: each converts for itself.
func TestSharedRemoteTierNeedsFleetKey(t *testing.T) {
	endpoint := startREAPI(t)
	f := newFixture(t, 32<<10, 2)
	remote := []string{"--remote", endpoint, "--remote-instance", "instance", "--remote-anonymous-shared"}
	a := append(f.args(remote...), "--root", filepath.Join(t.TempDir(), "a"))
	b := append(f.args(remote...), "--root", filepath.Join(t.TempDir(), "b"))
	out := filepath.Join(t.TempDir(), "img.ext4")
	if ra := decode[ext4Result](t, must(t, append(a, "materialize", f.ref, "--format", "ext4", "--out", out, "--json")...)); ra.FromCache {
		t.Fatalf("first host: %+v, want a conversion", ra)
	}
	if rb := decode[ext4Result](t, must(t, append(b, "materialize", f.ref, "--format", "ext4", "--out", out, "--json")...)); rb.FromCache {
		t.Fatalf("second host with its own key followed the first host's ref: %+v", rb)
	}
}
