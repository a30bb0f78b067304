package registry_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry"
)

const secret = "s3cr3t-PASSWORD"

// pullAll resolves, fetches the manifest and reads the layer of p.
func pullAll(t *testing.T, c *registry.Client, p pushed, auth authn.Authenticator) error {
	t.Helper()
	ctx := context.Background()
	desc, err := c.Resolve(ctx, p.ref, auth)
	if err != nil {
		return err
	}
	if desc.Digest != p.manifest {
		t.Fatalf("Resolve digest %s, want %s", desc.Digest, p.manifest)
	}
	dref, err := p.ref.Repo().Digest(desc.Digest)
	if err != nil {
		return err
	}
	b, _, err := c.Manifest(ctx, dref, auth)
	if err != nil {
		return err
	}
	if blob.FromBytes(b) != p.manifest {
		t.Fatalf("manifest bytes do not match")
	}
	rc, err := c.Blob(ctx, p.ref.Repo(), p.layerD, int64(len(p.layer)), auth)
	if err != nil {
		return err
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(rc); err != nil {
		return err
	}
	if !bytes.Equal(buf.Bytes(), p.layer) {
		t.Fatalf("layer bytes differ")
	}
	return nil
}

func pushAuthed(t *testing.T, host, repoTag string, size int, auth authn.Authenticator) pushed {
	t.Helper()
	layer := registrytest.RandomBytes(t, size)
	d := registrytest.Push(t, host, repoTag, registrytest.Image(t, layer), auth)
	return pushed{ref: mustRef(t, host+"/"+repoTag), manifest: blob.Digest(d.String()), layer: layer, layerD: blob.FromBytes(layer)}
}

func noSecret(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), secret) {
		t.Fatalf("%s: error contains the password: %v", what, err)
	}
}

func TestDistributionAnonymous(t *testing.T) {
	d := registrytest.StartDistribution(t, registrytest.DistributionOptions{})
	p := pushAuthed(t, d.Host, "lib/anon:v1", 20000, nil)
	r := newClient(t, nil)
	if err := pullAll(t, r.c, p, nil); err != nil {
		t.Fatal(err)
	}
	if err := r.c.CheckAccess(context.Background(), p.ref, nil); err != nil {
		t.Fatalf("CheckAccess: %v", err)
	}
	if err := r.c.CheckAccess(context.Background(), mustRef(t, d.Host+"/lib/anon:nope"), nil); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("CheckAccess unknown tag: %v", err)
	}
}

func TestDistributionBasicAuth(t *testing.T) {
	d := registrytest.StartDistribution(t, registrytest.DistributionOptions{BasicUsers: map[string]string{"alice": secret}})
	good := basicAuth("alice", secret)
	p := pushAuthed(t, d.Host, "team/private:v1", 20000, good)
	r := newClient(t, nil)
	ctx := context.Background()
	if err := pullAll(t, r.c, p, good); err != nil {
		t.Fatal(err)
	}
	if err := r.c.CheckAccess(ctx, p.ref, good); err != nil {
		t.Fatalf("CheckAccess: %v", err)
	}
	for _, tc := range []struct {
		desc string
		auth authn.Authenticator
	}{
		{"anonymous", nil},
		{"wrong password", basicAuth("alice", secret+"x")},
		{"unknown user", basicAuth("mallory", secret)},
	} {
		err := r.c.CheckAccess(ctx, p.ref, tc.auth)
		if !errors.Is(err, registry.ErrDenied) {
			t.Fatalf("%s: CheckAccess err = %v, want ErrDenied", tc.desc, err)
		}
		noSecret(t, tc.desc, err)
		err = pullAll(t, r.c, p, tc.auth)
		if !errors.Is(err, registry.ErrDenied) {
			t.Fatalf("%s: pull err = %v, want ErrDenied", tc.desc, err)
		}
		noSecret(t, tc.desc, err)
		_, err = r.c.Blob(ctx, p.ref.Repo(), p.layerD, int64(len(p.layer)), tc.auth)
		if !errors.Is(err, registry.ErrDenied) {
			t.Fatalf("%s: blob err = %v, want ErrDenied", tc.desc, err)
		}
		noSecret(t, tc.desc, err)
	}
	if strings.Contains(r.dump(t), secret) || strings.Contains(r.dump(t), "alice") {
		t.Fatalf("metrics mention credentials:\n%s", r.dump(t))
	}
}

func TestDistributionTokenAuth(t *testing.T) {
	ts := registrytest.NewTokenServer(t, registrytest.TokenOptions{
		Users:  map[string]string{"bob": secret},
		Public: func(repo string) bool { return strings.HasPrefix(repo, "public/") },
	})
	d := registrytest.StartDistribution(t, registrytest.DistributionOptions{Token: ts})
	good := basicAuth("bob", secret)
	priv := pushAuthed(t, d.Host, "team/private:v1", 20000, good)
	pub := pushAuthed(t, d.Host, "public/app:v1", 20000, good)
	r := newClient(t, nil)
	ctx := context.Background()

	if err := pullAll(t, r.c, priv, good); err != nil {
		t.Fatalf("private with credentials: %v", err)
	}
	if err := pullAll(t, r.c, pub, nil); err != nil {
		t.Fatalf("public anonymously: %v", err)
	}
	if err := r.c.CheckAccess(ctx, pub.ref, nil); err != nil {
		t.Fatalf("CheckAccess public anonymous: %v", err)
	}
	if err := r.c.CheckAccess(ctx, priv.ref, good); err != nil {
		t.Fatalf("CheckAccess private: %v", err)
	}
	for _, tc := range []struct {
		desc string
		auth authn.Authenticator
	}{
		{"anonymous on private", nil},
		{"wrong password", basicAuth("bob", "not-"+secret)},
		{"unknown user", basicAuth("eve", secret)},
	} {
		err := r.c.CheckAccess(ctx, priv.ref, tc.auth)
		if !errors.Is(err, registry.ErrDenied) {
			t.Fatalf("%s: CheckAccess err = %v, want ErrDenied", tc.desc, err)
		}
		noSecret(t, tc.desc, err)
		err = pullAll(t, r.c, priv, tc.auth)
		if !errors.Is(err, registry.ErrDenied) {
			t.Fatalf("%s: pull err = %v, want ErrDenied", tc.desc, err)
		}
		noSecret(t, tc.desc, err)
	}
	if strings.Contains(r.dump(t), secret) {
		t.Fatalf("metrics mention the password")
	}
}

func TestDistributionExpiredTokenRefreshedOnce(t *testing.T) {
	// The first token lives only a short while; later ones live long. The
	// manifest is read with the first token; once it has expired, the blob
	// GET gets a 401 and ggcr's transport fetches a new token once.
	const short = 3 * time.Second
	const registryLeeway = 60 * time.Second
	var shortFrom atomic.Int64 // the first token issued to the client under test
	shortFrom.Store(1 << 30)
	ts := registrytest.NewTokenServer(t, registrytest.TokenOptions{
		Users: map[string]string{"bob": secret},
		Lifetime: func(n int) time.Duration {
			if int64(n) == shortFrom.Load() {
				// distribution accepts tokens up to a leeway past exp.
				return short - registryLeeway
			}
			return time.Hour
		},
	})
	d := registrytest.StartDistribution(t, registrytest.DistributionOptions{Token: ts})
	good := basicAuth("bob", secret)
	p := pushAuthed(t, d.Host, "team/private:v1", 20000, good)
	px := registrytest.NewProxy(t, d.Host)
	p.ref = mustRef(t, px.Host()+"/team/private:v1")
	r := newClient(t, nil)
	ctx := context.Background()
	issued := ts.Issued()
	shortFrom.Store(int64(issued + 1))
	if _, _, err := r.c.Manifest(ctx, p.ref, good); err != nil {
		t.Fatal(err)
	}
	if ts.Issued() != issued+1 {
		t.Fatalf("tokens issued for the manifest: %d, want 1", ts.Issued()-issued)
	}
	time.Sleep(short + 1500*time.Millisecond) // let the token expire (a wait, not a timing assertion) // let token 2 expire (waiting, not asserting on time)
	rc, err := r.c.Blob(ctx, p.ref.Repo(), p.layerD, int64(len(p.layer)), good)
	var got []byte
	if err == nil {
		got, err = io.ReadAll(rc)
		rc.Close()
	}
	if err != nil || !bytes.Equal(got, p.layer) {
		t.Fatalf("blob after expiry: %v (tokens %d, blob GETs %d)", err, ts.Issued()-issued, px.Count("GET", "blob"))
	}
	if ts.Issued() != issued+2 {
		t.Fatalf("tokens issued: %d, want 2 (one refresh)", ts.Issued()-issued)
	}
	if n := px.Count("GET", "blob"); n != 2 {
		t.Fatalf("blob GETs %d, want 2 (401, then success)", n)
	}
}
