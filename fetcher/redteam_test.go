package fetcher_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/registry/credential"
)

// Regression tests from the red-team review: attacks on the fetcher's
// authorization that are defeated.

// Concurrent fetches of one private tag by alice and by callers without
// her credentials never share a result: the collapse key carries the
// credential identity, so a refused caller cannot ride alice's fetch.
func TestRedteamCollapseDoesNotCrossCallers(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{})
	want, img := threeLayers(t)
	e.push(t, "private/secret:v1", img)
	ref := e.ref("private/secret:v1")

	creds := []struct {
		desc string
		cred credential.Credential
		ok   bool
	}{
		{"alice", alice(), true},
		{"anonymous", credential.Anonymous, false},
		{"alice's name, wrong password", credential.Basic("", user, "guess"), false},
		{"alice's password, another name", credential.Basic("", "mallory", password), false},
		{"alice's secret as a registry token", credential.RegistryToken("", password), false},
	}
	const rounds = 8
	var wg sync.WaitGroup
	errs := make([][]error, len(creds))
	for i, c := range creds {
		errs[i] = make([]error, rounds)
		for j := range rounds {
			wg.Go(func() {
				im, err := e.f.FetchImage(ctx, ref, c.cred)
				if err == nil {
					var got [][]byte
					got, _, err = readLayers(ctx, im)
					if err == nil && !bytes.Equal(got[0], want[0]) {
						err = errors.New("wrong layer bytes")
					}
				}
				errs[i][j] = err
			})
		}
	}
	wg.Wait()
	for i, c := range creds {
		for j, err := range errs[i] {
			if c.ok && err != nil {
				t.Errorf("%s, call %d: %v", c.desc, j, err)
			}
			if !c.ok && !errors.Is(err, registry.ErrDenied) {
				t.Errorf("%s, call %d = %v, want ErrDenied", c.desc, j, err)
			}
		}
	}
}

// With ProofTTL 0 no proof is ever kept: every fetch asks the origin, so
// a caller is refused even right after alice warmed the cache, and alice
// herself is checked on every fetch. TagTTL 0 likewise never serves a tag
// from the cache.
func TestRedteamZeroTTLsAlwaysAsk(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{})
	cfg := fetcher.DefaultConfig()
	cfg.Store, cfg.Registry, cfg.Now = e.stack, e.client, e.clock.Now
	cfg.ProofTTL, cfg.TagTTL = 0, 0
	f, err := fetcher.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, img := threeLayers(t)
	d := e.push(t, "private/secret:v1", img)
	for _, ref := range []string{e.ref("private/secret:v1"), e.ref("private/secret@" + string(d))} {
		if _, err := f.FetchImage(ctx, ref, alice()); err != nil {
			t.Fatalf("alice %s: %v", ref, err)
		}
		e.counter.Reset()
		if _, err := f.FetchImage(ctx, ref, alice()); err != nil {
			t.Fatalf("alice again %s: %v", ref, err)
		}
		if n := e.counter.Count("HEAD", "manifest"); n != 1 {
			t.Errorf("alice's second fetch of %s with ProofTTL 0 made %d manifest HEADs, want 1", ref, n)
		}
		for _, c := range []credential.Credential{credential.Anonymous, credential.Basic("", user, "guess")} {
			if _, err := f.FetchImage(ctx, ref, c); !errors.Is(err, registry.ErrDenied) {
				t.Errorf("%s with ProofTTL 0 after alice = %v, want ErrDenied", ref, err)
			}
		}
	}
}

// A denial removes the caller's proof at once: once the registry refuses
// alice (her tag expired, her proof not), the warm cache no longer admits
// her on the strength of the old proof.
func TestRedteamDenialRevokesProof(t *testing.T) {
	ctx := context.Background()
	var forbid atomic.Bool
	counter := &registrytest.Counter{}
	host := registrytest.InProcess(t, counter.Wrap, basicAuthFor("/v2/private/"), func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if forbid.Load() && r.URL.Path != "/v2/" {
				http.Error(w, `{"errors":[{"code":"DENIED"}]}`, http.StatusForbidden)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	e := newEnv(t, envOpts{proofTTL: 10 * time.Minute, tagTTL: time.Minute, host: host, counter: counter})
	_, img := threeLayers(t)
	d := e.push(t, "private/secret:v1", img)
	ref := e.ref("private/secret:v1")
	if _, err := e.f.FetchImage(ctx, ref, alice()); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(2 * time.Minute) // the tag expires, the proof does not
	forbid.Store(true)
	if _, err := e.f.FetchImage(ctx, ref, alice()); !errors.Is(err, registry.ErrDenied) {
		t.Fatalf("fetch after the registry revoked alice = %v, want ErrDenied", err)
	}
	// The digest (membership cached, proof gone) must not be served from
	// the cache either.
	if _, err := e.f.FetchImage(ctx, e.ref("private/secret@"+string(d)), alice()); !errors.Is(err, registry.ErrDenied) {
		t.Fatalf("digest fetch after the registry revoked alice = %v, want ErrDenied", err)
	}
	forbid.Store(false)
	counter.Reset()
	if _, err := e.f.FetchImage(ctx, e.ref("private/secret@"+string(d)), alice()); err != nil {
		t.Fatal(err)
	}
	if n := counter.Count("HEAD", "manifest"); n != 1 {
		t.Errorf("fetch after a denial made %d manifest HEADs, want 1 (a new proof)", n)
	}
}
