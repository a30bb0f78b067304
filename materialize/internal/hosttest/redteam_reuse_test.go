package hosttest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/internal/reapitest"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/materialize/internal/tartest"
	"github.com/strata-oci/strata/registry/credential"
)

// Red-team regression tests for issue 13: no cached artefact (an extracted
// overlay layer, a local or shared ext4 image, an extraction or conversion
// in flight) is handed to a caller who has not proven access to every blob
// it is made of. The victim, alice, holds a private image on a registry
// with basic auth; the attacker, mallory, knows its digests (and, for the
// replay, its manifest and config bytes, which are not secret once one
// has seen them) and serves what she likes from a registry of her own.

const secretFile = "etc/secret"

var secretBytes = []byte("the victim's private key material")

// victimImage is alice's private image: two gzip layers, the second holding
// the secret.
type victimImage struct {
	img      v1.Image
	ref      string
	manifest []byte
	mt       types.MediaType
	config   []byte
	digest   v1.Hash
	layers   []v1.Descriptor
	base     []byte // the bytes of layers[0], which is not secret
}

func newVictim(t *testing.T, reg string) *victimImage {
	t.Helper()
	base := tartest.New().Dir("etc").File("etc/os-release", []byte("ID=victim\n")).Gzip()
	secret := tartest.New().Dir("etc").File(secretFile, secretBytes, tartest.Mode(0o600)).Gzip()
	img := registrytest.Image(t, base, secret)
	registrytest.Push(t, reg, "private/secret:v1", img, basicAuth("alice", "alice-pw"))
	v := &victimImage{img: img, ref: reg + "/private/secret:v1", base: base}
	var err error
	if v.manifest, err = img.RawManifest(); err != nil {
		t.Fatal(err)
	}
	if v.mt, err = img.MediaType(); err != nil {
		t.Fatal(err)
	}
	if v.config, err = img.RawConfigFile(); err != nil {
		t.Fatal(err)
	}
	if v.digest, err = img.Digest(); err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	v.layers = m.Layers
	return v
}

func basicAuth(user, pass string) authn.Authenticator {
	return &authn.Basic{Username: user, Password: pass}
}

func alice() credential.Credential { return credential.Basic("", "alice", "alice-pw") }

// reuseEnv is one executor host with alice's registry and mallory's.
type reuseEnv struct {
	h      *strata.Host
	reg    *prometheus.Registry
	victim *victimImage
	evil   *registrytest.Hostile
}

func newReuseEnv(t *testing.T, cfg strata.Config) *reuseEnv {
	t.Helper()
	reg := registrytest.InProcess(t, registrytest.BasicAuthHandler("alice", "alice-pw"))
	e := &reuseEnv{reg: prometheus.NewRegistry(), victim: newVictim(t, reg), evil: registrytest.NewHostile(t)}
	h, err := strata.Open(context.Background(), withMetrics(cfg, e.reg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	e.h = h
	return e
}

// aliceFetches fetches alice's image as alice and reads every layer, so
// that her repository is a proven member of each (nothing is
// materialized yet).
func (e *reuseEnv) aliceFetches(t *testing.T) *fetcher.Image {
	t.Helper()
	img, err := e.h.Fetcher().FetchImage(context.Background(), e.victim.ref, alice())
	if err != nil {
		t.Fatalf("alice's fetch: %v", err)
	}
	for _, l := range img.Layers() {
		rc, err := l.Open(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// listing is a manifest of mallory's own that lists alice's layer digests
// (with the sizes and media types given by mod) over a config of her own,
// which her registry serves. She never had the layers' bytes.
func (e *reuseEnv) listing(t *testing.T, mod func(i int, d *v1.Descriptor)) string {
	t.Helper()
	var cfg map[string]any
	if err := json.Unmarshal(e.victim.config, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["author"] = "mallory"
	cb, _ := json.Marshal(cfg)
	cd := blob.FromBytes(cb).String()
	e.evil.Blob(cd, cb)
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     string(types.OCIManifestSchema1),
		"config":        map[string]any{"mediaType": string(types.OCIConfigJSON), "digest": cd, "size": len(cb)},
	}
	var ls []v1.Descriptor
	for i, d := range e.victim.layers {
		if mod != nil {
			mod(i, &d)
		}
		ls = append(ls, d)
	}
	m["layers"] = ls
	mb, _ := json.Marshal(m)
	e.evil.Manifest("latest", mb, string(types.OCIManifestSchema1))
	return e.evil.Host + "/mallory/app:latest"
}

// replay has mallory's registry serve alice's manifest and config bytes
// (no layers) and returns the reference to fetch them by.
func (e *reuseEnv) replay(t *testing.T) string {
	t.Helper()
	e.evil.Manifest("latest", e.victim.manifest, string(e.victim.mt))
	cfgDigest, err := e.victim.img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	e.evil.Blob(cfgDigest.String(), e.victim.config)
	return e.evil.Host + "/mallory/app:latest"
}

// hasSecret reports whether any of dirs holds the victim's secret file.
func hasSecret(dirs []string) bool {
	for _, d := range dirs {
		if b, err := os.ReadFile(filepath.Join(d, secretFile)); err == nil && bytes.Equal(b, secretBytes) {
			return true
		}
	}
	return false
}

// TestRedteamOverlayDigestListing: alice's layers are extracted; mallory,
// anonymous, fetches a manifest of hers that only lists their digests.
// The overlay materializer must not hand her alice's layer directories.
func TestRedteamOverlayDigestListing(t *testing.T) {
	for _, tc := range []struct {
		desc string
		mod  func(i int, d *v1.Descriptor)
	}{
		{"right sizes and media types", nil},
		{"wrong sizes", func(i int, d *v1.Descriptor) { d.Size += 17 }},
		{"wrong media types", func(i int, d *v1.Descriptor) { d.MediaType = types.OCIUncompressedLayer }},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			ctx := context.Background()
			e := newReuseEnv(t, testConfig(t))
			vimg := e.aliceFetches(t)
			vres, err := e.h.Overlay().Materialize(ctx, vimg)
			if err != nil {
				t.Fatal(err)
			}
			if !hasSecret(vres.LowerDirs) {
				t.Fatal("alice's own materialization lacks her secret")
			}
			vres.Lease.Release()

			ref := e.listing(t, tc.mod)
			mimg, err := e.h.Fetcher().FetchImage(ctx, ref, credential.Anonymous)
			if err != nil {
				t.Logf("mallory's fetch refused: %v", err)
				return
			}
			res, err := e.h.Overlay().Materialize(ctx, mimg)
			if err == nil {
				defer res.Lease.Release()
				t.Fatalf("mallory got layer directories %v (secret readable: %v)", res.LowerDirs, hasSecret(res.LowerDirs))
			}
			asked := 0
			for _, l := range e.victim.layers {
				asked += e.evil.Requests("GET", "blob", l.Digest.String())
			}
			if asked == 0 {
				t.Errorf("the refusal did not come from asking mallory's registry for a layer (0 GETs): %v", err)
			}
			// Nor through ext4, nor by reading the layers.
			if r, err := e.h.Ext4().Materialize(ctx, mimg, nil); err == nil {
				t.Errorf("mallory got an ext4 image %s", r.Path)
			}
			for _, l := range mimg.Layers() {
				if rc, err := l.Open(ctx); err == nil {
					if b, err := io.ReadAll(rc); err == nil {
						t.Errorf("mallory read layer %s (%d bytes)", l.Digest(), len(b))
					}
					rc.Close()
				}
			}
		})
	}
}

// TestRedteamManifestReplay: alice's image is materialized (ext4 and
// overlay); mallory's registry replays alice's manifest and config bytes,
// which verify, but holds none of the layers. Neither the local ext4
// image nor the extracted layers may be handed to her.
func TestRedteamManifestReplay(t *testing.T) {
	ctx := context.Background()
	e := newReuseEnv(t, testConfig(t))
	vimg := e.aliceFetches(t)
	if _, err := e.h.Ext4().Materialize(ctx, vimg, nil); err != nil {
		t.Fatal(err)
	}
	vres, err := e.h.Overlay().Materialize(ctx, vimg)
	if err != nil {
		t.Fatal(err)
	}
	vres.Lease.Release()

	ref := e.replay(t)
	mimg, err := e.h.Fetcher().FetchImage(ctx, ref, credential.Anonymous)
	if err != nil {
		t.Fatalf("mallory's fetch of replayed documents: %v (the replay itself verifies; the layers must be refused)", err)
	}
	if mimg.Digest() != vimg.Digest() {
		t.Fatalf("replay served manifest %s, want alice's %s", mimg.Digest(), vimg.Digest())
	}
	if r, err := e.h.Ext4().Materialize(ctx, mimg, nil); err == nil {
		t.Errorf("mallory got alice's ext4 image %s (from cache: %v)", r.Path, r.FromCache)
	}
	if res, err := e.h.Overlay().Materialize(ctx, mimg); err == nil {
		res.Lease.Release()
		t.Errorf("mallory got alice's layer directories %v", res.LowerDirs)
	}
	asked := 0
	for _, l := range e.victim.layers {
		asked += e.evil.Requests("GET", "blob", l.Digest.String())
	}
	if asked == 0 {
		t.Error("no layer was asked of mallory's registry")
	}
	// Alice still gets both from the cache.
	if r, err := e.h.Ext4().Materialize(ctx, vimg, nil); err != nil || !r.FromCache {
		t.Errorf("alice's ext4 image after the attack: %+v, %v", r, err)
	}
}

// TestRedteamSharedDerivationReplay: two executors share a REAPI tier
// and a fleet key. Alice's ext4 image, converted on the first, is in the
// shared tier with a signed derivation ref. Mallory, authenticated at her
// own registry (so she reads the shared tier), replays alice's manifest on
// the second executor: the derivation ref must not be followed for her.
func TestRedteamSharedDerivationReplay(t *testing.T) {
	ctx := context.Background()
	endpoint := reapitest.Start(t)
	fleet := func() strata.Config {
		cfg := testConfig(t)
		cfg.RemoteEndpoint = endpoint
		cfg.RemoteInstance = reapitest.Instance
		cfg.IdentityKey = credential.NewSecretKey([]byte("a fleet key shared by every executor here"))
		return cfg
	}
	a := newReuseEnv(t, fleet())
	vimg := a.aliceFetches(t)
	if r, err := a.h.Ext4().Materialize(ctx, vimg, nil); err != nil || r.FromCache {
		t.Fatalf("alice's conversion: %+v, %v", r, err)
	}

	b, err := strata.Open(ctx, fleet())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a.evil.BasicAuth("mallory", "mallory-pw")
	ref := a.replay(t)
	mimg, err := b.Fetcher().FetchImage(ctx, ref, credential.Basic("", "mallory", "mallory-pw"))
	if err != nil {
		t.Fatalf("mallory's fetch: %v", err)
	}
	if mimg.LocalOnly() {
		t.Fatal("mallory's image is local-only: the test needs her on the shared tier")
	}
	if r, err := b.Ext4().Materialize(ctx, mimg, nil); err == nil {
		t.Fatalf("mallory got alice's image from the shared tier: %+v", r)
	}
	if st := b.Ext4().Stats(); st.Downloads != 0 {
		t.Errorf("the second executor downloaded %d derived images for mallory", st.Downloads)
	}

	// Alice on the second executor: her repository proves itself (one
	// download per layer from her registry, then the shared image).
	vb, err := b.Fetcher().FetchImage(ctx, a.victim.ref, alice())
	if err != nil {
		t.Fatal(err)
	}
	if r, err := b.Ext4().Materialize(ctx, vb, nil); err != nil || !r.FromCache {
		t.Fatalf("alice on the second executor: %+v, %v", r, err)
	}
}

// counterValue reads a counter of reg by name (summing its series).
func counterValue(t *testing.T, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				v += m.GetCounter().GetValue()
			}
		}
	}
	return v
}

// TestRedteamForeignFlights: mallory starts extracting (or converting) a
// layer of alice's from her own registry, which stalls or then serves wrong
// bytes. Alice, a proven member, materializes meanwhile: she must neither
// wait for mallory's work nor inherit its error.
func TestRedteamForeignFlights(t *testing.T) {
	for _, tc := range []struct {
		desc   string
		format string
		lie    bool // after the stall, mallory's registry serves wrong bytes
	}{
		{"overlay, stalled", "overlay", false},
		{"overlay, failing", "overlay", true},
		{"ext4, stalled", "ext4", false},
		{"ext4, failing", "ext4", true},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			e := newReuseEnv(t, testConfig(t))
			vimg := e.aliceFetches(t)
			ref := e.replay(t) // same manifest digest: ext4 work is keyed by it
			target := e.victim.layers[1].Digest.String()
			// The base layer is public: mallory's registry has its bytes, so
			// her work gets as far as the secret layer and waits there.
			e.evil.Blob(e.victim.layers[0].Digest.String(), e.victim.base)
			if tc.lie {
				e.evil.Blob(target, bytes.Repeat([]byte{0x1f}, int(e.victim.layers[1].Size)))
			}
			reached, release := e.evil.Gate(target)
			defer release()
			mimg, err := e.h.Fetcher().FetchImage(ctx, ref, credential.Anonymous)
			if err != nil {
				t.Fatal(err)
			}
			malloryDone := make(chan error, 1)
			go func() {
				var err error
				if tc.format == "overlay" {
					var r *materializeResult
					r, err = materializeOverlay(ctx, e.h, mimg)
					if err == nil {
						r.release()
					}
				} else {
					_, err = e.h.Ext4().Materialize(ctx, mimg, nil)
				}
				malloryDone <- err
			}()
			select {
			case <-reached: // mallory's work is in flight, held by her registry
			case err := <-malloryDone:
				t.Fatalf("mallory's work ended before it reached her registry: %v", err)
			}

			aliceDone := make(chan error, 1)
			go func() {
				var err error
				if tc.format == "overlay" {
					var r *materializeResult
					r, err = materializeOverlay(ctx, e.h, vimg)
					if err == nil && !hasSecret(r.dirs) {
						err = errors.New("alice's layers lack her secret")
					}
					if err == nil {
						r.release()
					}
				} else {
					_, err = e.h.Ext4().Materialize(ctx, vimg, nil)
				}
				aliceDone <- err
			}()
			joined := func() bool {
				if tc.format == "overlay" {
					return counterValue(t, e.reg, "strata_overlay_singleflight_collapsed_total") > 0
				}
				return e.h.Ext4().Stats().Collapsed > 0
			}
			tick := time.NewTicker(2 * time.Millisecond) // polls; asserts nothing about time
			defer tick.Stop()
			for {
				select {
				case err := <-aliceDone:
					if err != nil {
						t.Fatalf("alice: %v", err)
					}
					release()
					if err := <-malloryDone; err == nil {
						t.Error("mallory's materialization succeeded without the layer's bytes")
					}
					return
				case <-tick.C:
					if joined() {
						release()
						t.Fatalf("alice joined mallory's %s work (and then: %v)", tc.format, <-aliceDone)
					}
				}
			}
		})
	}
}

// materializeResult is an overlay result with its lease.
type materializeResult struct {
	dirs    []string
	release func()
}

func materializeOverlay(ctx context.Context, h *strata.Host, img *fetcher.Image) (*materializeResult, error) {
	r, err := h.Overlay().Materialize(ctx, img)
	if err != nil {
		return nil, err
	}
	return &materializeResult{dirs: r.LowerDirs, release: r.Lease.Release}, nil
}

// TestRedteamReuseErrorsNameNoSecret: the refusals say what happened
// without credentials.
func TestRedteamReuseErrorsNameNoSecret(t *testing.T) {
	ctx := context.Background()
	e := newReuseEnv(t, testConfig(t))
	vimg := e.aliceFetches(t)
	if _, err := e.h.Ext4().Materialize(ctx, vimg, nil); err != nil {
		t.Fatal(err)
	}
	e.evil.BasicAuth("mallory", "mallory-pw")
	mimg, err := e.h.Fetcher().FetchImage(ctx, e.replay(t), credential.Basic("", "mallory", "mallory-pw"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.h.Ext4().Materialize(ctx, mimg, nil)
	if err == nil {
		t.Fatal("mallory got alice's image")
	}
	if strings.Contains(err.Error(), "mallory-pw") || strings.Contains(err.Error(), "alice-pw") {
		t.Errorf("error carries a password: %v", err)
	}
	if !strings.Contains(err.Error(), "not handed out") {
		t.Errorf("error does not say the image was refused: %v", err)
	}
}

// TestSameRepositoryReusesWithoutDownload: the rule costs a proven member
// nothing. Bob, another user with access to alice's repository, gets the
// layers alice extracted and the image she converted from the cache, with
// no blob request to the registry (his credentials make one manifest HEAD:
// his own access proof).
func TestSameRepositoryReusesWithoutDownload(t *testing.T) {
	ctx := context.Background()
	var count registrytest.Counter
	users := map[string]string{"alice": "alice-pw", "bob": "bob-pw"}
	auth := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || users[u] != p {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	reg := registrytest.InProcess(t, count.Wrap, auth)
	v := newVictim(t, reg)
	h, err := strata.Open(ctx, withMetrics(testConfig(t), prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	aimg, err := h.Fetcher().FetchImage(ctx, v.ref, alice())
	if err != nil {
		t.Fatal(err)
	}
	ares, err := h.Overlay().Materialize(ctx, aimg)
	if err != nil {
		t.Fatal(err)
	}
	ares.Lease.Release()
	if _, err := h.Ext4().Materialize(ctx, aimg, nil); err != nil {
		t.Fatal(err)
	}

	before := count.Count("GET", "blob")
	bimg, err := h.Fetcher().FetchImage(ctx, v.ref, credential.Basic("", "bob", "bob-pw"))
	if err != nil {
		t.Fatal(err)
	}
	bres, err := h.Overlay().Materialize(ctx, bimg)
	if err != nil {
		t.Fatal(err)
	}
	defer bres.Lease.Release()
	if !hasSecret(bres.LowerDirs) {
		t.Error("bob's layers lack the content")
	}
	r, err := h.Ext4().Materialize(ctx, bimg, nil)
	if err != nil || !r.FromCache {
		t.Fatalf("bob's ext4: %+v, %v; want alice's converted image", r, err)
	}
	if got := count.Count("GET", "blob") - before; got != 0 {
		t.Errorf("a proven member's reuse made %d blob GETs, want 0", got)
	}
	if got := count.Count("HEAD", "manifest"); got < 2 {
		t.Errorf("%d manifest HEADs: bob's access was not proven at the registry", got)
	}
}
