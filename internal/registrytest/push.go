package registrytest

import (
	"crypto/rand"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Push writes img to host as repoTag ("repo:tag") with ggcr's remote.Write
// and returns the manifest digest. auth may be nil (anonymous). Failure is
// fatal to the test.
func Push(t testing.TB, host, repoTag string, img v1.Image, auth authn.Authenticator) v1.Hash {
	t.Helper()
	if auth == nil {
		auth = authn.Anonymous
	}
	ref, err := name.ParseReference(host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatalf("registrytest.Push: %v", err)
	}
	if err := remote.Write(ref, img, remote.WithAuth(auth)); err != nil {
		t.Fatalf("registrytest.Push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatalf("registrytest.Push: digest: %v", err)
	}
	return d
}

// PushBlob uploads data as a blob to host/repo and returns its digest.
func PushBlob(t testing.TB, host, repo string, data []byte, auth authn.Authenticator) v1.Hash {
	t.Helper()
	if auth == nil {
		auth = authn.Anonymous
	}
	r, err := name.NewRepository(host+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatalf("registrytest.PushBlob: %v", err)
	}
	l := static.NewLayer(data, types.OCILayer)
	if err := remote.WriteLayer(r, l, remote.WithAuth(auth)); err != nil {
		t.Fatalf("registrytest.PushBlob %s: %v", r, err)
	}
	d, _ := l.Digest()
	return d
}

// Image returns an image with one layer per entry of layers (static
// bytes, OCI layer media type) on an empty base.
func Image(t testing.TB, layers ...[]byte) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, b := range layers {
		var err error
		img, err = mutate.AppendLayers(img, static.NewLayer(b, types.OCILayer))
		if err != nil {
			t.Fatalf("registrytest.Image: %v", err)
		}
	}
	return img
}

// RandomBytes returns n random bytes.
func RandomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("registrytest.RandomBytes: %v", err)
	}
	return b
}
