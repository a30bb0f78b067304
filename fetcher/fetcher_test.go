package fetcher_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/registry/credential"
)

func threeLayers(t *testing.T) ([][]byte, v1.Image) {
	layers := [][]byte{registrytest.RandomBytes(t, 300<<10), registrytest.RandomBytes(t, 1<<20), registrytest.RandomBytes(t, 10)}
	return layers, registrytest.Image(t, layers...)
}

// 64 concurrent FetchImage calls and full layer reads of one uncached
// image: the registry sees one manifest GET and one GET per blob.
func TestConcurrentFetchesHitRegistryOnce(t *testing.T) {
	registries(t, func(t *testing.T, o envOpts) {
		e := newEnv(t, o)
		want, img := threeLayers(t)
		e.push(t, "app/web:v1", img)

		const n = 64
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				im, err := e.f.FetchImage(context.Background(), e.ref("app/web:v1"), credential.Anonymous)
				if err != nil {
					errs[i] = err
					return
				}
				got, _, err := readLayers(context.Background(), im)
				if err == nil {
					for j := range want {
						if !bytes.Equal(got[j], want[j]) {
							err = errors.New("wrong layer bytes")
						}
					}
				}
				errs[i] = err
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("caller %d: %v", i, err)
			}
		}
		if got := e.counter.Count("GET", "manifest"); got != 1 {
			t.Errorf("manifest GETs = %d, want 1", got)
		}
		// One GET per blob: the config and three layers.
		if got := e.counter.Count("GET", "blob"); got != 4 {
			t.Errorf("blob GETs = %d, want 4 (config + 3 layers)", got)
		}
	})
}

// A private image fetched by alice is refused to callers without her
// credentials from every tier, even while it is warm in memory; her proof
// expiring makes the fetcher ask the registry again.
func TestPrivateImageNeedsProof(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{proofTTL: 10 * time.Minute})
	want, img := threeLayers(t)
	e.push(t, "private/app:v1", img)
	ref := e.ref("private/app:v1")

	a, err := e.f.FetchImage(ctx, ref, alice())
	if err != nil {
		t.Fatalf("alice: %v", err)
	}
	if got, _, err := readLayers(ctx, a); err != nil || !bytes.Equal(got[1], want[1]) {
		t.Fatalf("alice's layers: %v", err)
	}
	ok, err := e.f.IsImageCached(ctx, ref)
	if err != nil || !ok {
		t.Fatalf("IsImageCached after alice = %v, %v", ok, err)
	}

	for _, tc := range []struct {
		desc string
		cred credential.Credential
	}{
		{"anonymous", credential.Anonymous},
		{"wrong password", credential.Basic("", user, "guess")},
		{"another user", credential.Basic("", "mallory", password)},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			for _, r := range []string{ref, e.ref("private/app@" + string(a.Digest()))} {
				_, err := e.f.FetchImage(ctx, r, tc.cred)
				if !errors.Is(err, registry.ErrDenied) {
					t.Fatalf("FetchImage(%s) = %v, want ErrDenied", r, err)
				}
				if strings.Contains(err.Error(), password) {
					t.Fatalf("error leaks the password: %v", err)
				}
			}
		})
	}

	// Within the proof TTL alice needs no network at all.
	e.counter.Reset()
	if _, err := e.f.FetchImage(ctx, ref, alice()); err != nil {
		t.Fatal(err)
	}
	if n := e.requests(); n != 0 {
		t.Errorf("warm fetch within proof TTL made %d requests, want 0", n)
	}
	// After the proof expires she is checked again (one HEAD).
	e.clock.Advance(11 * time.Minute)
	e.counter.Reset()
	if _, err := e.f.FetchImage(ctx, ref, alice()); err != nil {
		t.Fatal(err)
	}
	if n := e.counter.Count("HEAD", "manifest"); n < 1 {
		t.Errorf("fetch after the proof expired made %d manifest HEADs, want a new check", n)
	}
}

// Proving access to one repository does not unlock another repository's
// manifests by digest.
func TestProofDoesNotCrossRepositories(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{})
	_, priv := threeLayers(t)
	_, pub := threeLayers(t)
	pd := e.push(t, "private/secret:v1", priv)
	e.push(t, "public/app:v1", pub)
	if _, err := e.f.FetchImage(ctx, e.ref("private/secret:v1"), alice()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.f.FetchImage(ctx, e.ref("public/app:v1"), credential.Anonymous); err != nil {
		t.Fatal(err)
	}
	// The anonymous caller is proven for public/app, and the private
	// manifest is warm in the cache; asking for it under public/app must go
	// to the registry, which does not have it there.
	_, err := e.f.FetchImage(ctx, e.ref("public/app@"+string(pd)), credential.Anonymous)
	if !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("private digest under a public repository = %v, want not found", err)
	}
}

// With the registry down, a cached digest reference fetches, a cached tag
// fetches within its TTL, and an uncached reference fails clearly.
func TestRegistryDown(t *testing.T) {
	registries(t, func(t *testing.T, o envOpts) {
		ctx := context.Background()
		e := newEnv(t, withTTLs(o, 5*time.Minute, 30*time.Minute))
		want, img := threeLayers(t)
		d := e.push(t, "app/web:v1", img)
		if _, err := e.f.FetchImage(ctx, e.ref("app/web:v1"), credential.Anonymous); err != nil {
			t.Fatal(err)
		}
		im, err := e.f.FetchImage(ctx, e.ref("app/web@"+string(d)), credential.Anonymous)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := readLayers(ctx, im); err != nil {
			t.Fatal(err)
		}
		e.setDown(true)

		byDigest, err := e.f.FetchImage(ctx, e.ref("app/web@"+string(d)), credential.Anonymous)
		if err != nil {
			t.Fatalf("cached digest reference with the registry down: %v", err)
		}
		got, _, err := readLayers(ctx, byDigest)
		if err != nil || !bytes.Equal(got[0], want[0]) {
			t.Fatalf("cached layers with the registry down: %v", err)
		}
		if _, err := e.f.FetchImage(ctx, e.ref("app/web:v1"), credential.Anonymous); err != nil {
			t.Fatalf("cached tag within its TTL with the registry down: %v", err)
		}
		e.clock.Advance(6 * time.Minute)
		if _, err := e.f.FetchImage(ctx, e.ref("app/web:v1"), credential.Anonymous); !errors.Is(err, registry.ErrUnreachable) {
			t.Fatalf("tag past its TTL with the registry down = %v, want ErrUnreachable", err)
		}
		_, err = e.f.FetchImage(ctx, e.ref("app/other:v1"), credential.Anonymous)
		if !errors.Is(err, registry.ErrUnreachable) {
			t.Fatalf("uncached image with the registry down = %v, want ErrUnreachable", err)
		}
	})
}

// A denial removes the caller's proof at once: after the registry stops
// admitting alice, her cached proof does not serve.
func TestDenialRevokesProof(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{tagTTL: time.Nanosecond}) // tags always re-resolved
	_, img := threeLayers(t)
	e.push(t, "private/app:v1", img)
	ref := e.ref("private/app:v1")
	if _, err := e.f.FetchImage(ctx, ref, alice()); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Second) // the tag expires; the proof does not
	// Alice's password changes at the registry: her old one is now denied.
	changed := credential.Basic("", user, "old-password")
	if _, err := e.f.FetchImage(ctx, ref, changed); !errors.Is(err, registry.ErrDenied) {
		t.Fatalf("wrong password = %v, want denied", err)
	}
	if _, err := e.f.FetchImage(ctx, ref, alice()); err != nil {
		t.Fatalf("alice after another caller's denial: %v", err)
	}
}

// An index resolves to the fetcher's platform; no match lists what exists.
func TestIndexPlatformSelection(t *testing.T) {
	registries(t, func(t *testing.T, o envOpts) {
		ctx := context.Background()
		e := newEnv(t, o)
		idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
		byArch := map[string][]byte{}
		for _, arch := range []string{"amd64", "arm64"} {
			layer := []byte("layer for " + arch)
			byArch[arch] = layer
			img := registrytest.Image(t, layer)
			cf, _ := img.ConfigFile()
			cf = cf.DeepCopy()
			cf.OS, cf.Architecture = "linux", arch
			img, _ = mutate.ConfigFile(img, cf)
			idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
		}
		if err := pushIndex(e, "multi/arch:v1", idx); err != nil {
			t.Fatal(err)
		}
		for _, arch := range []string{"amd64", "arm64"} {
			t.Run(arch, func(t *testing.T) {
				f := e.withPlatform(t, manifest.Platform{OS: "linux", Architecture: arch})
				im, err := f.FetchImage(ctx, e.ref("multi/arch:v1"), credential.Anonymous)
				if err != nil {
					t.Fatal(err)
				}
				got, _, err := readLayers(ctx, im)
				if err != nil || !bytes.Equal(got[0], byArch[arch]) {
					t.Fatalf("layer = %q, %v; want %q", got, err, byArch[arch])
				}
				if im.Index == "" || im.Config.Platform.Architecture != arch {
					t.Errorf("index %q, config platform %+v", im.Index, im.Config.Platform)
				}
			})
		}
		f := e.withPlatform(t, manifest.Platform{OS: "linux", Architecture: "s390x"})
		_, err := f.FetchImage(ctx, e.ref("multi/arch:v1"), credential.Anonymous)
		if !errors.Is(err, manifest.ErrNoMatchingPlatform) || !strings.Contains(err.Error(), "linux/arm64") {
			t.Fatalf("no-match error = %v, want ErrNoMatchingPlatform listing linux/arm64", err)
		}
	})
}

func (e *env) withPlatform(t *testing.T, p manifest.Platform) *fetcher.Fetcher {
	t.Helper()
	cfg := fetcher.DefaultConfig()
	cfg.Store, cfg.Registry, cfg.Now, cfg.Platform = e.stack, e.client, e.clock.Now, p
	f, err := fetcher.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func pushIndex(e *env, repoTag string, idx v1.ImageIndex) error {
	ref, err := name.ParseReference(e.host+"/"+repoTag, name.Insecure)
	if err != nil {
		return err
	}
	defer e.counter.Reset()
	return remote.WriteIndex(ref, idx)
}

// A warm fetch of an image held in the tiers, with a valid proof, makes no
// request at all, and layer reads report the tier that served them.
func TestWarmFetchMakesNoRequests(t *testing.T) {
	registries(t, func(t *testing.T, o envOpts) {
		ctx := context.Background()
		e := newEnv(t, o)
		_, img := threeLayers(t)
		e.push(t, "app/web:v1", img)
		im, err := e.f.FetchImage(ctx, e.ref("app/web:v1"), credential.Anonymous)
		if err != nil {
			t.Fatal(err)
		}
		if _, src, err := readLayers(ctx, im); err != nil || src[0] != fetcher.SourceRegistry {
			t.Fatalf("cold reads served by %v, %v; want the registry", src, err)
		}
		e.counter.Reset()
		im, err = e.f.FetchImage(ctx, e.ref("app/web:v1"), credential.Anonymous)
		if err != nil {
			t.Fatal(err)
		}
		_, src, err := readLayers(ctx, im)
		if err != nil {
			t.Fatal(err)
		}
		if n := e.requests(); n != 0 {
			t.Errorf("warm fetch made %d registry requests, want 0", n)
		}
		if !im.FromCache || src[0] != "memory" {
			t.Errorf("FromCache=%v, layer served by %v; want cache and memory", im.FromCache, src)
		}
	})
}

// InvalidateCache forgets the tag and proofs and removes blobs no other
// cached image references.
func TestInvalidateCache(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{})
	shared := registrytest.RandomBytes(t, 4096)
	a := registrytest.Image(t, shared, registrytest.RandomBytes(t, 100))
	b := registrytest.Image(t, shared, registrytest.RandomBytes(t, 200))
	e.push(t, "app/a:v1", a)
	e.push(t, "app/b:v1", b)
	for _, r := range []string{"app/a:v1", "app/b:v1"} {
		im, err := e.f.FetchImage(ctx, e.ref(r), credential.Anonymous)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := readLayers(ctx, im); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.f.InvalidateCache(ctx, e.ref("app/a:v1")); err != nil {
		t.Fatal(err)
	}
	if ok, _ := e.f.IsImageCached(ctx, e.ref("app/a:v1")); ok {
		t.Error("image a still cached after InvalidateCache")
	}
	if ok, err := e.f.IsImageCached(ctx, e.ref("app/b:v1")); !ok || err != nil {
		t.Errorf("image b not cached after invalidating a: %v", err)
	}
	al, _ := a.Layers()
	own, _ := al[1].Digest()
	if _, err := e.stack.Stat(ctx, blob.Digest(own.String())); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("a's own layer still stored: %v", err)
	}
	sh, _ := al[0].Digest()
	if _, err := e.stack.Stat(ctx, blob.Digest(sh.String())); err != nil {
		t.Errorf("layer shared with b was removed: %v", err)
	}
	// The next fetch asks the registry again.
	e.counter.Reset()
	if _, err := e.f.FetchImage(ctx, e.ref("app/a:v1"), credential.Anonymous); err != nil {
		t.Fatal(err)
	}
	if e.counter.Count("HEAD", "manifest") == 0 {
		t.Error("fetch after invalidation made no registry check")
	}
}

func withTTLs(o envOpts, tag, proof time.Duration) envOpts {
	o.tagTTL, o.proofTTL = tag, proof
	return o
}
