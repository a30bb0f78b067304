package ext4

import (
	"context"
	"net"
	"os"
	"testing"

	sdkdigest "github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"github.com/bazelbuild/remote-apis-sdks/go/pkg/fakes"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"

	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/memory"
	"github.com/strata-oci/strata/tiers/reapi"
)

// zstdCaps advertises zstd, which the SDK fake serves but does not announce.
type zstdCaps struct{ exec *fakes.Exec }

func (c zstdCaps) GetCapabilities(ctx context.Context, req *repb.GetCapabilitiesRequest) (*repb.ServerCapabilities, error) {
	res, err := c.exec.GetCapabilities(ctx, req)
	if err != nil {
		return nil, err
	}
	res.CacheCapabilities.SupportedCompressors = []repb.Compressor_Value{repb.Compressor_ZSTD}
	res.CacheCapabilities.SupportedBatchUpdateCompressors = []repb.Compressor_Value{repb.Compressor_ZSTD}
	return res, nil
}

// startREAPI serves the SDK's fake CAS and ActionCache on a loopback port
// and returns its endpoint and CAS.
func startREAPI(t *testing.T) (string, *fakes.CAS) {
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
	repb.RegisterCapabilitiesServer(srv, zstdCaps{exec: fakes.NewExec(t, ac, cas)})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return "grpc://" + lis.Addr().String(), cas
}

// executorStack is one executor's tiers: its own memory tier over the
// shared REAPI tier.
func executorStack(t *testing.T, endpoint, name string) *tiers.Stack {
	t.Helper()
	rt, err := reapi.New(context.Background(), reapi.Config{Endpoint: endpoint, Instance: "instance", Name: "reapi-" + name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	return tiers.NewStack(tiers.StackConfig{
		Name: "stack-" + name,
		Tiers: []tiers.Entry{
			{Tier: memory.New(memory.Config{Name: "memory-" + name})},
			{Tier: rt, Shared: true},
		},
	})
}

// TestTwoExecutorsShareOneREAPI: two stacks share one REAPI server; the
// second executor downloads the image the first converted.
func TestTwoExecutorsShareOneREAPI(t *testing.T) {
	endpoint, cas := startREAPI(t)
	a := newConverter(t, executorStack(t, endpoint, "a"))
	b := newConverter(t, executorStack(t, endpoint, "b"))
	ctx := context.Background()
	img := sampleImage()

	ra, err := a.Materialize(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	rd := sdkdigest.Digest{Hash: ra.Digest.Encoded(), Size: ra.Size}
	if _, ok := cas.Get(rd); !ok {
		t.Fatalf("the image %s never reached the REAPI CAS", ra.Digest)
	}
	if ok, err := b.IsMaterialized(ctx, img, nil); err != nil || !ok {
		t.Fatalf("executor b: IsMaterialized = %v, %v", ok, err)
	}
	rb, err := b.Materialize(ctx, img, &Options{FreeBytes: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if sa, sb := a.Stats(), b.Stats(); sa.Conversions != 1 || sb.Conversions != 0 || sb.Downloads != 1 || !rb.FromCache {
		t.Fatalf("executor a %+v, executor b %+v: b should have downloaded", sa, sb)
	}
	if rb.Digest != ra.Digest {
		t.Fatalf("digests differ: %s vs %s", ra.Digest, rb.Digest)
	}
	e2fsck(t, rb.Path)
	if cas.BlobReads(rd) == 0 {
		t.Error("executor b did not read the image from the REAPI CAS")
	}
	fi, err := os.Stat(rb.Path)
	if err != nil || fi.Size() <= ra.Size || fi.Size() < 8<<20 {
		t.Fatalf("b's image (%v) is not a grown copy of a's (%d bytes) with 8 MiB free: %v", fi.Size(), ra.Size, err)
	}
}
