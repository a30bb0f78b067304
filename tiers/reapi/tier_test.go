package reapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	bspb "google.golang.org/genproto/googleapis/bytestream"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers/tiertest"
)

// conformance runs tiertest against a fresh fake per subtest. The Corrupt
// hook rots the blob's bytes on the server (see fakeServer.rotBlob).
func conformance(t *testing.T, o fakeOptions, mods ...func(*Config)) {
	mod := func(c *Config) {
		for _, m := range mods {
			m(c)
		}
	}
	var servers sync.Map // blob.Tier -> *fakeServer
	tiertest.Run(t, tiertest.Config{
		New: func(t *testing.T) blob.Tier {
			f := startFake(t, o)
			tier := newTier(t, f, mod)
			servers.Store(blob.Tier(tier), f)
			return tier
		},
		CannotList:        true,
		CannotDeleteBlobs: true,
		Corrupt: func(t *testing.T, tier blob.Tier, d blob.Digest) {
			f, ok := servers.Load(tier)
			if !ok {
				t.Fatal("Corrupt: unknown tier")
			}
			f.(*fakeServer).rotBlob(d.Encoded())
		},
		// The server persists: a new tier (a restarted executor, with
		// empty caches) over the same server sees the same blobs and refs.
		Reopen: func(t *testing.T, old blob.Tier) blob.Tier {
			f, ok := servers.Load(old)
			if !ok {
				t.Fatal("Reopen: unknown tier")
			}
			old.Close()
			tier := newTier(t, f.(*fakeServer), mod)
			servers.Store(blob.Tier(tier), f)
			return tier
		},
	})
}

func TestConformance(t *testing.T) { conformance(t, fakeOptions{}) }

func TestConformanceZstd(t *testing.T) { conformance(t, fakeOptions{zstd: true}) }

// variants are the server set-ups the contract tests run against.
var variants = []struct {
	desc string
	o    fakeOptions
	mod  func(*Config)
}{
	{"plain", fakeOptions{}, nil},
	{"zstd advertised", fakeOptions{zstd: true}, nil},
	{"zstd advertised, compression off", fakeOptions{zstd: true}, func(c *Config) { c.Compression = CompressionOff }},
	{"zstd forced, not advertised", fakeOptions{}, func(c *Config) { c.Compression = CompressionZstd }},
	{"small batch limit", fakeOptions{maxBatch: 64 << 10}, nil},
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func put(t *testing.T, tier blob.Tier, data []byte) blob.Digest {
	t.Helper()
	d := blob.FromBytes(data)
	if err := tier.Put(context.Background(), d, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatalf("Put(%d bytes): %v", len(data), err)
	}
	return d
}

func readAll(t *testing.T, tier blob.Tier, d blob.Digest) []byte {
	t.Helper()
	rc, info, err := tier.Open(context.Background(), d)
	if err != nil {
		t.Fatalf("Open(%s): %v", d, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", d, err)
	}
	if info.Digest != d || info.Size != int64(len(b)) || info.Tier != tier.Name() {
		t.Fatalf("Open info = %+v, want digest %s size %d tier %q", info, d, len(b), tier.Name())
	}
	return b
}

// failReader fails the test if it is read.
type failReader struct{ t *testing.T }

func (r failReader) Read([]byte) (int, error) {
	r.t.Error("Put read the source of a blob the server already holds")
	return 0, io.ErrUnexpectedEOF
}

func TestRoundTrip(t *testing.T) {
	sizes := []struct {
		desc string
		n    int
	}{
		{"empty", 0},
		{"one byte", 1},
		{"100 KiB", 100 << 10},
		{"5 MiB, beyond a batch", 5 << 20},
	}
	for _, v := range variants {
		t.Run(v.desc, func(t *testing.T) {
			f := startFake(t, v.o)
			tier := newTier(t, f, v.mod)
			for i, sz := range sizes {
				t.Run(sz.desc, func(t *testing.T) {
					data := randomBytes(uint64(i+1), sz.n)
					d := put(t, tier, data)
					info, err := tier.Stat(context.Background(), d)
					if err != nil || info.Size != int64(sz.n) || info.Digest != d || info.Tier != "reapi-test" {
						t.Fatalf("Stat = %+v, %v", info, err)
					}
					if got := readAll(t, tier, d); !bytes.Equal(got, data) {
						t.Fatal("read back different bytes")
					}
					if sz.n > 0 {
						if stored, ok := f.CAS.Get(digest.Digest{Hash: d.Encoded(), Size: int64(sz.n)}); !ok || !bytes.Equal(stored, data) {
							t.Fatal("the server does not hold the blob under its own digest")
						}
					}
					// Idempotent: the source is not even read.
					if err := tier.Put(context.Background(), d, int64(sz.n), failReader{t}); err != nil && sz.n > 0 {
						t.Fatalf("second Put: %v", err)
					}
				})
			}
		})
	}
}

func TestPutPaths(t *testing.T) {
	tests := []struct {
		desc               string
		o                  fakeOptions
		n                  int
		wantBatch, wantBS  bool
		wantZstdCompressed bool
	}{
		{"small blob goes in a batch", fakeOptions{}, 10 << 10, true, false, false},
		{"blob above the server's batch limit streams", fakeOptions{maxBatch: 64 << 10}, 100 << 10, false, true, false},
		{"blob above 4 MiB streams", fakeOptions{}, 4 << 20, false, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			f := startFake(t, tt.o)
			tier := newTier(t, f, nil)
			batch0, write0 := f.CAS.BatchReqs(), f.CAS.WriteReqs()
			d := put(t, tier, randomBytes(7, tt.n))
			// Batches also carry the size index's Command and Action.
			gotBS := f.CAS.WriteReqs() > write0
			blobWrites := f.CAS.BlobWrites(digest.Digest{Hash: d.Encoded(), Size: int64(tt.n)})
			if blobWrites != 1 {
				t.Fatalf("blob written %d times, want 1", blobWrites)
			}
			if gotBS != tt.wantBS {
				t.Errorf("ByteStream writes: %d, want some: %v", f.CAS.WriteReqs()-write0, tt.wantBS)
			}
			if tt.wantBatch && f.CAS.BatchReqs()-batch0 < 2 {
				t.Errorf("batch requests = %d, want the blob's and the index's", f.CAS.BatchReqs()-batch0)
			}
		})
	}
}

func TestPutMismatchStoresNothing(t *testing.T) {
	for _, v := range variants {
		t.Run(v.desc, func(t *testing.T) {
			f := startFake(t, v.o)
			tier := newTier(t, f, v.mod)
			for _, n := range []int{1000, 3 << 20} {
				data := randomBytes(uint64(n), n)
				d := blob.FromBytes(data)
				bad := bytes.Clone(data)
				bad[n-1] ^= 1
				short := data[:n-1]
				long := append(bytes.Clone(data), 'x')
				cases := []struct {
					desc string
					src  []byte
				}{{"flipped last byte", bad}, {"short", short}, {"long", long}}
				for _, c := range cases {
					err := tier.Put(context.Background(), d, int64(n), bytes.NewReader(c.src))
					var me *blob.MismatchError
					if !errors.As(err, &me) || !errors.Is(err, blob.ErrMismatch) {
						t.Fatalf("%d bytes, %s: Put err = %v, want *MismatchError", n, c.desc, err)
					}
					if _, ok := f.CAS.Get(digest.Digest{Hash: d.Encoded(), Size: int64(n)}); ok {
						t.Fatalf("%d bytes, %s: the server holds the blob after a failed Put", n, c.desc)
					}
					if _, err := tier.Stat(context.Background(), d); !errors.Is(err, blob.ErrNotFound) {
						t.Fatalf("%d bytes, %s: Stat after failed Put = %v, want ErrNotFound", n, c.desc, err)
					}
				}
			}
		})
	}
}

func TestInvalidInput(t *testing.T) {
	tier := newTier(t, startFake(t, fakeOptions{}), nil)
	ctx := context.Background()
	bad := blob.Digest("sha256:../../etc")
	if _, err := tier.Stat(ctx, bad); !errors.Is(err, blob.ErrInvalidDigest) {
		t.Errorf("Stat: %v", err)
	}
	if _, _, err := tier.Open(ctx, bad); !errors.Is(err, blob.ErrInvalidDigest) {
		t.Errorf("Open: %v", err)
	}
	if err := tier.Put(ctx, bad, 1, bytes.NewReader([]byte("x"))); !errors.Is(err, blob.ErrInvalidDigest) {
		t.Errorf("Put: %v", err)
	}
	if err := tier.Delete(ctx, bad); !errors.Is(err, blob.ErrInvalidDigest) {
		t.Errorf("Delete: %v", err)
	}
	if err := tier.Put(ctx, blob.FromBytes([]byte("x")), -1, bytes.NewReader([]byte("x"))); err == nil {
		t.Error("Put with negative size succeeded")
	}
	for _, k := range []blob.RefKey{{}, {Namespace: "tag"}, {Namespace: "tag", Name: "a\x00b"}} {
		if _, err := tier.GetRef(ctx, k); !errors.Is(err, blob.ErrInvalidRef) {
			t.Errorf("GetRef(%q): %v", k, err)
		}
		if err := tier.PutRef(ctx, k, blob.Ref{Digest: blob.EmptyDigest}); !errors.Is(err, blob.ErrInvalidRef) {
			t.Errorf("PutRef(%q): %v", k, err)
		}
		if err := tier.DeleteRef(ctx, k); !errors.Is(err, blob.ErrInvalidRef) {
			t.Errorf("DeleteRef(%q): %v", k, err)
		}
	}
	if err := tier.PutRef(ctx, blob.RefKey{Namespace: "tag", Name: "x"}, blob.Ref{Digest: "nope"}); !errors.Is(err, blob.ErrInvalidDigest) {
		t.Errorf("PutRef with bad digest: %v", err)
	}
}

func TestUnsupported(t *testing.T) {
	tier := newTier(t, startFake(t, fakeOptions{}), nil)
	ctx := context.Background()
	d := put(t, tier, []byte("kept"))
	if err := tier.Walk(ctx, func(blob.Info) error { return nil }); !errors.Is(err, blob.ErrUnsupported) {
		t.Errorf("Walk: %v", err)
	}
	if err := tier.WalkRefs(ctx, "", func(blob.RefKey, blob.Ref) error { return nil }); !errors.Is(err, blob.ErrUnsupported) {
		t.Errorf("WalkRefs: %v", err)
	}
	if _, err := tier.Usage(ctx); !errors.Is(err, blob.ErrUnsupported) {
		t.Errorf("Usage: %v", err)
	}
	if err := tier.Delete(ctx, d); !errors.Is(err, blob.ErrUnsupported) {
		t.Errorf("Delete: %v", err)
	}
}

func TestMissing(t *testing.T) {
	f := startFake(t, fakeOptions{})
	tier := newTier(t, f, nil)
	ctx := context.Background()
	d := blob.FromBytes([]byte("never stored"))
	if _, err := tier.Stat(ctx, d); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("Stat: %v", err)
	}
	if _, _, err := tier.Open(ctx, d); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("Open: %v", err)
	}
	// Known size (taught by a Put on another tier's index) but evicted blob.
	data := []byte("stored then evicted")
	d = put(t, tier, data)
	f.CAS.Clear()
	tier2 := newTier(t, f, nil)
	if _, _, err := tier2.Open(ctx, d); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("Open of evicted blob: %v", err)
	}
}

// TestFleet: a second executor, with empty caches, finds what the first
// stored from the digest alone, through the size index.
func TestFleet(t *testing.T) {
	for _, v := range variants {
		t.Run(v.desc, func(t *testing.T) {
			f := startFake(t, v.o)
			a := newTier(t, f, v.mod)
			b := newTier(t, f, v.mod)
			data := randomBytes(3, 300<<10)
			d := put(t, a, data)
			info, err := b.Stat(context.Background(), d)
			if err != nil || info.Size != int64(len(data)) {
				t.Fatalf("other executor Stat = %+v, %v", info, err)
			}
			c := newTier(t, f, v.mod)
			if got := readAll(t, c, d); !bytes.Equal(got, data) {
				t.Fatal("other executor read different bytes")
			}
		})
	}
}

// TestForeignBlob: a blob another REAPI client stored has no size index
// entry; the tier cannot name it until a ref teaches it the size.
func TestForeignBlob(t *testing.T) {
	f := startFake(t, fakeOptions{})
	tier := newTier(t, f, nil)
	ctx := context.Background()
	data := []byte("written by bazel")
	f.CAS.Put(data)
	d := blob.FromBytes(data)
	if _, err := tier.Stat(ctx, d); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Stat of a foreign blob = %v, want ErrNotFound (size unknown)", err)
	}
	k := blob.RefKey{Namespace: "tag", Name: "foreign"}
	if err := tier.PutRef(ctx, k, blob.Ref{Digest: d, Size: int64(len(data))}); err != nil {
		t.Fatalf("PutRef: %v", err)
	}
	fresh := newTier(t, f, nil)
	r, err := fresh.GetRef(ctx, k)
	if err != nil {
		t.Fatalf("GetRef: %v", err)
	}
	if got := readAll(t, fresh, r.Digest); !bytes.Equal(got, data) {
		t.Fatal("read different bytes")
	}
}

func TestRefs(t *testing.T) {
	for _, v := range variants {
		t.Run(v.desc, func(t *testing.T) {
			f := startFake(t, v.o)
			now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
			var mu sync.Mutex
			clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
			tier := newTier(t, f, func(c *Config) { mod(v.mod)(c); c.Now = clock })
			ctx := context.Background()
			d1 := put(t, tier, []byte("manifest one"))
			d2 := put(t, tier, []byte("manifest two!"))
			k := blob.RefKey{Namespace: "tag", Scope: "tenant-a", Name: "docker.io/library/alpine:3"}
			other := blob.RefKey{Namespace: "tag", Scope: "tenant-b", Name: k.Name}

			if _, err := tier.GetRef(ctx, k); !errors.Is(err, blob.ErrNotFound) {
				t.Fatalf("GetRef before PutRef: %v", err)
			}
			want := blob.Ref{Digest: d1, Size: 12, MediaType: "application/vnd.oci.image.manifest.v1+json", Expires: now.Add(time.Hour)}
			if err := tier.PutRef(ctx, k, want); err != nil {
				t.Fatalf("PutRef: %v", err)
			}
			got, err := tier.GetRef(ctx, k)
			if err != nil || got.Digest != want.Digest || got.Size != want.Size || got.MediaType != want.MediaType || !got.Expires.Equal(want.Expires) {
				t.Fatalf("GetRef = %+v, %v; want %+v", got, err, want)
			}
			if _, err := tier.GetRef(ctx, other); !errors.Is(err, blob.ErrNotFound) {
				t.Fatalf("another scope sees the ref: %v", err)
			}
			// Replace, without expiry.
			if err := tier.PutRef(ctx, k, blob.Ref{Digest: d2, Size: 13}); err != nil {
				t.Fatalf("PutRef replace: %v", err)
			}
			if got, err := tier.GetRef(ctx, k); err != nil || got.Digest != d2 || !got.Expires.IsZero() || got.MediaType != "" {
				t.Fatalf("GetRef after replace = %+v, %v", got, err)
			}
			// Expiry is honoured on read.
			if err := tier.PutRef(ctx, other, blob.Ref{Digest: d1, Size: 12, Expires: now.Add(time.Minute)}); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			now = now.Add(time.Minute)
			mu.Unlock()
			if _, err := tier.GetRef(ctx, other); !errors.Is(err, blob.ErrNotFound) {
				t.Fatalf("expired ref: %v", err)
			}
			if err := tier.DeleteRef(ctx, other); !errors.Is(err, blob.ErrNotFound) {
				t.Fatalf("DeleteRef of expired ref: %v", err)
			}
			// Delete writes a tombstone.
			if err := tier.DeleteRef(ctx, k); err != nil {
				t.Fatalf("DeleteRef: %v", err)
			}
			if _, err := tier.GetRef(ctx, k); !errors.Is(err, blob.ErrNotFound) {
				t.Fatalf("GetRef after DeleteRef: %v", err)
			}
			if err := tier.DeleteRef(ctx, k); !errors.Is(err, blob.ErrNotFound) {
				t.Fatalf("second DeleteRef: %v", err)
			}
			// And can be written again.
			if err := tier.PutRef(ctx, k, blob.Ref{Digest: d1, Size: 12}); err != nil {
				t.Fatal(err)
			}
			if got, err := tier.GetRef(ctx, k); err != nil || got.Digest != d1 {
				t.Fatalf("GetRef after re-put = %+v, %v", got, err)
			}
		})
	}
}

func mod(m func(*Config)) func(*Config) {
	if m == nil {
		return func(*Config) {}
	}
	return m
}

// TestStrictPutRef: PutRef of a blob the CAS lacks fails with ErrNotFound
// and writes nothing, to the ActionCache or the CAS.
func TestStrictPutRef(t *testing.T) {
	f := startFake(t, fakeOptions{})
	tier := newTier(t, f, nil)
	ctx := context.Background()
	k := blob.RefKey{Namespace: "derived", Scope: "s", Name: "ext4"}
	absent := blob.FromBytes([]byte("not uploaded"))
	batch0 := f.CAS.BatchReqs()
	err := tier.PutRef(ctx, k, blob.Ref{Digest: absent, Size: 12})
	if !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("PutRef of absent blob = %v, want ErrNotFound", err)
	}
	ka := refKeyAction(k)
	if n := f.AC.Writes(ka.digest); n != 0 {
		t.Fatalf("ActionCache written %d times", n)
	}
	if n := f.CAS.BatchReqs() - batch0; n != 0 {
		t.Fatalf("%d batch uploads for a refused PutRef", n)
	}
	if _, err := tier.GetRef(ctx, k); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("GetRef = %v", err)
	}
	// With the blob present it works, and the entry passes the strict check.
	d := put(t, tier, []byte("not uploaded"))
	if err := tier.PutRef(ctx, k, blob.Ref{Digest: d, Size: 12}); err != nil {
		t.Fatalf("PutRef: %v", err)
	}
	if n := f.AC.Writes(ka.digest); n != 1 {
		t.Fatalf("ActionCache written %d times, want 1", n)
	}
	// The key's Action and Command are in the CAS too.
	if _, ok := f.CAS.Get(ka.digest); !ok {
		t.Error("the key's Action is not in the CAS")
	}
	if _, ok := f.CAS.Get(bytesDigest(ka.command)); !ok {
		t.Error("the key's Command is not in the CAS")
	}
}

func TestReadOnlyActionCache(t *testing.T) {
	f := startFake(t, fakeOptions{acReadOnly: true})
	tier := newTier(t, f, nil)
	ctx := context.Background()
	d := put(t, tier, []byte("blob on a read-only AC")) // no size index, no error
	if err := tier.PutRef(ctx, blob.RefKey{Namespace: "tag", Name: "x"}, blob.Ref{Digest: d, Size: 22}); !errors.Is(err, blob.ErrUnsupported) {
		t.Fatalf("PutRef on read-only AC = %v, want ErrUnsupported", err)
	}
	if _, err := tier.Stat(ctx, d); err != nil {
		t.Fatalf("Stat after Put: %v", err)
	}
}

func TestClose(t *testing.T) {
	tier := newTier(t, startFake(t, fakeOptions{}), nil)
	d := put(t, tier, []byte("x"))
	tier.sizes.remove(d.Encoded())
	tier.exists.remove(d.Encoded())
	if err := tier.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := tier.Stat(context.Background(), d); !errors.Is(err, blob.ErrUnavailable) {
		t.Fatalf("Stat after Close = %v, want ErrUnavailable", err)
	}
	if err := tier.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestCancelledContext(t *testing.T) {
	f := startFake(t, fakeOptions{})
	tier := newTier(t, f, func(c *Config) { c.Breaker.Failures = 1 })
	d := put(t, tier, randomBytes(9, 3<<20))
	ctx, cancel := context.WithCancel(context.Background())
	rc, _, err := tier.Open(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := rc.Read(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := io.ReadAll(rc); !errors.Is(err, context.Canceled) {
		t.Fatalf("read after cancel = %v, want context.Canceled", err)
	}
	if s := tier.Stats().Breaker; s.State != BreakerClosed || s.Opens != 0 {
		t.Fatalf("a cancelled caller counted as a server failure: %+v", s)
	}
	tier.forget(d)
	if _, err := tier.Stat(ctx, d); !errors.Is(err, context.Canceled) {
		t.Fatalf("Stat with cancelled ctx = %v", err)
	}
}

func TestConcurrent(t *testing.T) {
	for _, v := range variants[:2] {
		t.Run(v.desc, func(t *testing.T) {
			f := startFake(t, v.o)
			tier := newTier(t, f, v.mod)
			blobs := make([][]byte, 8)
			for i := range blobs {
				blobs[i] = randomBytes(uint64(100+i), (i+1)*300<<10)
			}
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			for w := 0; w < 4; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for _, b := range blobs {
						d := blob.FromBytes(b)
						if err := tier.Put(context.Background(), d, int64(len(b)), bytes.NewReader(b)); err != nil {
							errs <- err
							return
						}
						rc, _, err := tier.Open(context.Background(), d)
						if err != nil {
							errs <- err
							return
						}
						got, err := io.ReadAll(rc)
						rc.Close()
						if err != nil || !bytes.Equal(got, b) {
							errs <- fmt.Errorf("read %s: %v", d, err)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}

// TestExistenceCache: presence is cached for ExistenceTTL, then asked
// again; a miss is never cached.
func TestExistenceCache(t *testing.T) {
	f := startFake(t, fakeOptions{})
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tier := newTier(t, f, func(c *Config) {
		c.ExistenceTTL = 30 * time.Second
		c.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	})
	ctx := context.Background()
	data := []byte("cached presence")
	d := put(t, tier, data)
	rd := digest.Digest{Hash: d.Encoded(), Size: int64(len(data))}
	asked := f.CAS.BlobMissingReqs(rd)
	for i := 0; i < 3; i++ {
		if _, err := tier.Stat(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.CAS.BlobMissingReqs(rd) - asked; got != 0 {
		t.Fatalf("%d FindMissingBlobs calls within the TTL, want 0", got)
	}
	mu.Lock()
	now = now.Add(30 * time.Second)
	mu.Unlock()
	if _, err := tier.Stat(ctx, d); err != nil {
		t.Fatal(err)
	}
	if got := f.CAS.BlobMissingReqs(rd) - asked; got != 1 {
		t.Fatalf("%d FindMissingBlobs calls after the TTL, want 1", got)
	}
	// Misses are not cached: the blob appears, the next Stat sees it.
	other := []byte("appears later")
	od := blob.FromBytes(other)
	tier.learnSize(od, int64(len(other)), false)
	if _, err := tier.Stat(ctx, od); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Stat before upload = %v", err)
	}
	f.CAS.Put(other)
	if _, err := tier.Stat(ctx, od); err != nil {
		t.Fatalf("Stat after another client uploaded = %v", err)
	}
}

// TestWriteAlreadyExists: a server that ends an upload because it already
// holds the blob (ALREADY_EXISTS, or an early committed_size) is success.
func TestWriteAlreadyExists(t *testing.T) {
	tests := []struct {
		desc    string
		respond func(ss grpc.ServerStream) error
	}{
		{"ALREADY_EXISTS", func(grpc.ServerStream) error { return status.Error(codes.AlreadyExists, "have it") }},
		{"early committed_size", func(ss grpc.ServerStream) error {
			return ss.SendMsg(&bspb.WriteResponse{CommittedSize: 5 << 20})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			var calls atomic.Int32
			var f *fakeServer
			data := randomBytes(31, 5<<20)
			f = startFake(t, fakeOptions{stream: []grpc.StreamServerInterceptor{
				func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
					if info.FullMethod != "/google.bytestream.ByteStream/Write" {
						return h(srv, ss)
					}
					calls.Add(1)
					var req bspb.WriteRequest
					if err := ss.RecvMsg(&req); err != nil {
						return err
					}
					f.CAS.Put(data) // another client's upload finished first
					return tt.respond(ss)
				}}})
			tier := newTier(t, f, nil)
			d := blob.FromBytes(data)
			if err := tier.Put(context.Background(), d, int64(len(data)), bytes.NewReader(data)); err != nil {
				t.Fatalf("Put = %v", err)
			}
			if calls.Load() != 1 {
				t.Fatalf("%d writes", calls.Load())
			}
		})
	}
}
