package fetcher_test

import (
	"bytes"
	"context"
	"io"
	"sync"
	"testing"

	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/registry/credential"
)

// TestPrefetch: Prefetch downloads a cold layer once (one blob GET), after
// which Open serves it from a tier without a request; a second Prefetch
// asks nothing; a Prefetch and an Open of a cold layer at the same time
// share one GET.
func TestPrefetch(t *testing.T) {
	registries(t, func(t *testing.T, o envOpts) {
		ctx := context.Background()
		e := newEnv(t, o)
		want, img := threeLayers(t)
		e.push(t, "public/app:v1", img)
		im, err := e.f.FetchImage(ctx, e.ref("public/app:v1"), credential.Anonymous)
		if err != nil {
			t.Fatal(err)
		}
		e.counter.Reset()
		for _, l := range im.Layers() {
			if err := l.(*fetcher.Layer).Prefetch(ctx); err != nil {
				t.Fatalf("Prefetch %s: %v", l.Digest(), err)
			}
		}
		if n := e.counter.Count("GET", "blob"); n != len(want) {
			t.Fatalf("Prefetch of %d cold layers made %d blob GETs, want one each", len(want), n)
		}
		e.counter.Reset()
		got, served, err := readLayers(ctx, im)
		if err != nil {
			t.Fatal(err)
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) || served[i] == fetcher.SourceRegistry {
				t.Fatalf("layer %d after Prefetch: from %q, right bytes %v; want a tier's copy", i, served[i], bytes.Equal(got[i], want[i]))
			}
		}
		for _, l := range im.Layers() {
			if err := l.(*fetcher.Layer).Prefetch(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if n := e.requests(); n != 0 {
			t.Fatalf("Open and Prefetch of local layers made %d registry requests, want 0", n)
		}

		// Prefetch and Open of one cold layer at once: one GET.
		want2, img2 := threeLayers(t)
		e.push(t, "public/other:v1", img2)
		im2, err := e.f.FetchImage(ctx, e.ref("public/other:v1"), credential.Anonymous)
		if err != nil {
			t.Fatal(err)
		}
		e.counter.Reset()
		var wg sync.WaitGroup
		errs := make([]error, 2*len(want2))
		for i, l := range im2.Layers() {
			wg.Go(func() { errs[2*i] = l.(*fetcher.Layer).Prefetch(ctx) })
			wg.Go(func() {
				rc, err := l.Open(ctx)
				if err != nil {
					errs[2*i+1] = err
					return
				}
				defer rc.Close()
				b, err := io.ReadAll(rc)
				if err == nil && !bytes.Equal(b, want2[i]) {
					t.Errorf("layer %d: wrong bytes", i)
				}
				errs[2*i+1] = err
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if n := e.counter.Count("GET", "blob"); n != len(want2) {
			t.Fatalf("concurrent Prefetch and Open of %d cold layers made %d blob GETs, want one each", len(want2), n)
		}
	})
}

// TestPrefetchProvesAccess: a layer the local tiers hold because another
// repository's caller read it is not taken as local for a caller whose
// repository has not proven it holds the blob: Prefetch reads that
// repository's registry, and with the registry down it fails, leaving
// the caller unproven (Authorize and Open fail too).
func TestPrefetchProvesAccess(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{})
	_, img := threeLayers(t)
	e.push(t, "private/secret:v1", img)
	e.push(t, "public/copy:v1", img)
	a, err := e.f.FetchImage(ctx, e.ref("private/secret:v1"), alice())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range a.Layers() {
		if err := l.(*fetcher.Layer).Prefetch(ctx); err != nil {
			t.Fatal(err)
		}
	}
	im, err := e.f.FetchImage(ctx, e.ref("public/copy:v1"), credential.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	l := im.Layers()[1].(*fetcher.Layer)
	e.setDown(true)
	if err := l.Prefetch(ctx); err == nil {
		t.Fatal("Prefetch for an unproven repository succeeded with its registry down: the local copy was taken as proof")
	}
	if err := l.Authorize(ctx); err == nil {
		t.Fatal("Authorize after a failed Prefetch succeeded")
	}
	if rc, err := l.Open(ctx); err == nil {
		rc.Close()
		t.Fatal("Open after a failed Prefetch handed out the cached layer")
	}
	e.setDown(false)
	e.counter.Reset()
	if err := l.Prefetch(ctx); err != nil {
		t.Fatal(err)
	}
	if n := e.counter.Count("GET", "blob"); n != 1 {
		t.Fatalf("Prefetch for the unproven repository made %d blob GETs, want 1 (its proof)", n)
	}
}
