package fetcher_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/registry/credential"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/memory"
)

// evilRegistry is a registry an attacker controls: it serves, for
// "evil/app:latest", whatever document the test gives it, and a HEAD that
// may describe a different document than the GET. It holds no blobs, and
// it never saw the victim's bytes.
type evilRegistry struct {
	host     string
	doc      []byte // served by GET (and HEAD unless headDigest is set)
	docType  string
	headDig  blob.Digest // if set, HEAD claims this digest...
	headSize int64       // ...of this size
	headType string
}

func newEvilRegistry(t *testing.T) *evilRegistry {
	t.Helper()
	ev := &evilRegistry{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
			w.WriteHeader(http.StatusOK)
		case strings.HasPrefix(r.URL.Path, "/v2/evil/app/manifests/"):
			if r.Method == http.MethodHead && ev.headDig != "" {
				w.Header().Set("Docker-Content-Digest", string(ev.headDig))
				w.Header().Set("Content-Type", ev.headType)
				w.Header().Set("Content-Length", fmt.Sprint(ev.headSize))
				w.WriteHeader(http.StatusOK)
				return
			}
			if ev.doc == nil {
				http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN"}]}`, http.StatusNotFound)
				return
			}
			w.Header().Set("Docker-Content-Digest", string(blob.FromBytes(ev.doc)))
			w.Header().Set("Content-Type", ev.docType)
			w.Header().Set("Content-Length", fmt.Sprint(len(ev.doc)))
			w.WriteHeader(http.StatusOK)
			if r.Method == http.MethodGet {
				w.Write(ev.doc)
			}
		default:
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	ev.host = strings.TrimPrefix(srv.URL, "http://")
	return ev
}

// victim pushes a private image, lets alice fetch it and read its layers
// (so the cache is warm), and returns what alice got.
func victim(t *testing.T, e *env) (*fetcher.Image, [][]byte) {
	t.Helper()
	want, img := threeLayers(t)
	e.push(t, "private/secret:v1", img)
	a, err := e.f.FetchImage(context.Background(), e.ref("private/secret:v1"), alice())
	if err != nil {
		t.Fatalf("alice: %v", err)
	}
	got, _, err := readLayers(context.Background(), a)
	if err != nil || !bytes.Equal(got[1], want[1]) {
		t.Fatalf("alice's layers: %v", err)
	}
	return a, want
}

// leaked reports whether the attacker's fetch handed out any of the
// victim's private manifest, config or layer bytes.
func leaked(t *testing.T, im *fetcher.Image, err error, a *fetcher.Image, want [][]byte) {
	t.Helper()
	if err != nil {
		t.Logf("attacker's fetch: %v", err)
		return // refused or failed: nothing handed out
	}
	if im.Digest() == a.Digest() {
		t.Errorf("attacker got the victim's private manifest %s", a.Digest())
	}
	if im.Config != nil && im.Manifest.Config.Digest == a.Manifest.Config.Digest {
		t.Errorf("attacker got the victim's private config %s", a.Manifest.Config.Digest)
	}
	got, _, rerr := readLayers(context.Background(), im)
	if rerr != nil {
		return
	}
	for i, b := range got {
		for j, w := range want {
			if bytes.Equal(b, w) {
				t.Errorf("attacker's layer %d is the victim's private layer %d (%d bytes)", i, j, len(b))
			}
		}
	}
}

// RedteamCrossRegistryLayers: an attacker who knows the digests (not the
// bytes) of a private image's config and layers serves, from a registry
// it controls, a manifest listing them. Fetching it anonymously must not
// hand out the victim's cached config or layers: the attacker's registry
// never had them.
func TestRedteamCrossRegistryLayers(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{})
	a, want := victim(t, e)
	ev := newEvilRegistry(t)

	desc := func(d manifest.Descriptor) map[string]any {
		return map[string]any{"mediaType": d.MediaType, "digest": d.Digest, "size": d.Size}
	}
	var layers []map[string]any
	for _, l := range a.Manifest.Layers {
		layers = append(layers, desc(l))
	}
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        desc(a.Manifest.Config),
		"layers":        layers,
	}
	ev.doc, _ = json.Marshal(m)
	ev.docType = "application/vnd.oci.image.manifest.v1+json"

	im, err := e.f.FetchImage(ctx, ev.host+"/evil/app:latest", credential.Anonymous)
	leaked(t, im, err, a, want)
}

// RedteamCrossRegistryIndexChild: the attacker's registry serves an index
// whose platform entry is the victim's private manifest digest.
func TestRedteamCrossRegistryIndexChild(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{})
	a, want := victim(t, e)
	ev := newEvilRegistry(t)

	p := e.f.Platform()
	ix := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []map[string]any{{
			"mediaType": "application/vnd.oci.image.manifest.v1+json",
			"digest":    a.Digest,
			"size":      a.Manifest.Size(),
			"platform":  map[string]string{"os": p.OS, "architecture": p.Architecture, "variant": p.Variant},
		}},
	}
	ev.doc, _ = json.Marshal(ix)
	ev.docType = "application/vnd.oci.image.index.v1+json"

	im, err := e.f.FetchImage(ctx, ev.host+"/evil/app:latest", credential.Anonymous)
	leaked(t, im, err, a, want)
}

// RedteamHeadLies: the attacker's registry answers the tag HEAD with the
// victim's manifest digest (and serves nothing on GET).
func TestRedteamHeadLies(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{})
	a, want := victim(t, e)
	ev := newEvilRegistry(t)
	ev.headDig, ev.headSize, ev.headType = a.Digest(), a.Manifest.Size(), string(a.Manifest.MediaType)

	im, err := e.f.FetchImage(ctx, ev.host+"/evil/app:latest", credential.Anonymous)
	leaked(t, im, err, a, want)
}

var (
	_ = io.EOF
	_ manifest.Platform
)

// RedteamForgedSharedProof: refs in a shared tier (a REAPI action cache)
// are written by whoever can write that cache. A tenant that can write
// action-cache entries forges the public ("anonymous") access proof and
// the tag of a private repository; a caller with bogus credentials must
// still be refused.
func TestRedteamForgedSharedProof(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{})
	shared := memory.New(memory.Config{Name: "shared"})
	t.Cleanup(func() { shared.Close() })
	st := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: e.top}, {Tier: shared, Shared: true}}})
	cfg := fetcher.DefaultConfig()
	cfg.Store, cfg.Registry, cfg.Now = st, e.client, e.clock.Now
	f, err := fetcher.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	want, img := threeLayers(t)
	e.push(t, "private/secret:v1", img)
	a, err := f.FetchImage(ctx, e.ref("private/secret:v1"), alice())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := readLayers(ctx, a); err != nil {
		t.Fatal(err)
	}

	// The forger writes two action-cache entries straight into the shared tier.
	repo := a.Reference.Repo().String()
	r := blob.Ref{Digest: a.Digest(), Size: a.Manifest.Size(), MediaType: string(a.Manifest.MediaType), Expires: e.clock.Now().Add(time.Hour)}
	if err := shared.PutRef(ctx, blob.RefKey{Namespace: blob.NamespaceProof, Scope: credential.AnonymousIdentity, Name: repo}, r); err != nil {
		t.Fatal(err)
	}
	if err := shared.PutRef(ctx, blob.RefKey{Namespace: blob.NamespaceTag, Name: repo + ":v1"}, r); err != nil {
		t.Fatal(err)
	}
	e.counter.Reset()
	im, err := f.FetchImage(ctx, e.ref("private/secret:v1"), credential.Basic("", "mallory", "anything"))
	leaked(t, im, err, a, want)
}
