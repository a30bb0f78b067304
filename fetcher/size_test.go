package fetcher_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/safego"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/registry/credential"
)

// sizeRegistry is a registry that serves "size/app:latest" (a manifest or
// an index, as the test builds it) and blobs by digest, sent chunked so
// that no Content-Length can contradict a size the manifest declares: the
// declared size is then all a reader has to count against.
type sizeRegistry struct {
	host  string
	docs  map[string][]byte // by tag or digest
	types map[string]string
	blobs map[string][]byte
}

func newSizeRegistry(t *testing.T) *sizeRegistry {
	t.Helper()
	s := &sizeRegistry{docs: map[string][]byte{}, types: map[string]string{}, blobs: map[string][]byte{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		switch {
		case p == "/v2/":
		case strings.HasPrefix(p, "/v2/size/app/manifests/"):
			ref := strings.TrimPrefix(p, "/v2/size/app/manifests/")
			doc, ok := s.docs[ref]
			if !ok {
				http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN"}]}`, http.StatusNotFound)
				return
			}
			w.Header().Set("Content-Type", s.types[ref])
			w.Header().Set("Docker-Content-Digest", string(blob.FromBytes(doc)))
			w.Header().Set("Content-Length", fmt.Sprint(len(doc)))
			if r.Method == http.MethodGet {
				w.Write(doc)
			}
		case strings.HasPrefix(p, "/v2/size/app/blobs/"):
			b, ok := s.blobs[strings.TrimPrefix(p, "/v2/size/app/blobs/")]
			if !ok {
				http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
				return
			}
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			w.Write(b)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	s.host = strings.TrimPrefix(srv.URL, "http://")
	return s
}

// doc serves v as JSON under ref (and under its digest), returning its
// digest and size.
func (s *sizeRegistry) doc(t *testing.T, ref, mediaType string, v any) (blob.Digest, int) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	d := blob.FromBytes(b)
	for _, k := range []string{ref, string(d)} {
		s.docs[k], s.types[k] = b, mediaType
	}
	return d, len(b)
}

func (s *sizeRegistry) blob(b []byte) blob.Digest {
	d := blob.FromBytes(b)
	s.blobs[string(d)] = b
	return d
}

// TestDeclaredSizes: descriptors with extreme sizes, served by a registry
// that sends blobs without a Content-Length. Sizes above
// manifest.MaxDescriptorSize (up to 2^63-1) fail FetchImage with a clear
// manifest.ErrInvalid; a size under the cap but wrong fails the read with
// a mismatch (too few declared) or as a broken download (too many). Nothing
// panics (a panic recovered on a worker goroutine
// would show as safego.ErrPanic; one not recovered ends the test binary).
func TestDeclaredSizes(t *testing.T) {
	const (
		ociManifest = "application/vnd.oci.image.manifest.v1+json"
		ociIndex    = "application/vnd.oci.image.index.v1+json"
	)
	capPlusOne := int64(manifest.MaxDescriptorSize) + 1
	tests := []struct {
		desc       string
		layerSize  func(n int64) int64
		configSize func(n int64) int64
		entrySize  func(n int64) int64 // non-nil: serve an index whose entry declares this
		fetchErr   error               // FetchImage's error
		readErr    error               // reading the layer's error, when FetchImage succeeds
	}{
		{desc: "layer of 2^63-1 bytes", layerSize: func(int64) int64 { return math.MaxInt64 }, fetchErr: manifest.ErrInvalid},
		{desc: "layer of 2^63-2 bytes", layerSize: func(int64) int64 { return math.MaxInt64 - 1 }, fetchErr: manifest.ErrInvalid},
		{desc: "layer one byte over the cap", layerSize: func(int64) int64 { return capPlusOne }, fetchErr: manifest.ErrInvalid},
		{desc: "layer of -1 bytes", layerSize: func(int64) int64 { return -1 }, fetchErr: manifest.ErrInvalid},
		{desc: "config of 2^63-1 bytes", configSize: func(int64) int64 { return math.MaxInt64 }, fetchErr: manifest.ErrInvalid},
		{desc: "index entry of 2^63-1 bytes", entrySize: func(int64) int64 { return math.MaxInt64 }, fetchErr: manifest.ErrInvalid},
		// A stream that ends before the declared size is a broken download:
		// resumed, then given up on.
		{desc: "layer at the cap (1 TiB), far more than is sent", layerSize: func(int64) int64 { return manifest.MaxDescriptorSize }, readErr: registry.ErrUnreachable},
		{desc: "layer declared one byte short", layerSize: func(n int64) int64 { return n - 1 }, readErr: blob.ErrMismatch},
		{desc: "layer declared zero bytes", layerSize: func(int64) int64 { return 0 }, readErr: blob.ErrMismatch},
		{desc: "config declared one byte long", configSize: func(n int64) int64 { return n + 1 }, fetchErr: registry.ErrUnreachable},
		{desc: "config declared one byte short", configSize: func(n int64) int64 { return n - 1 }, fetchErr: blob.ErrMismatch},
		{desc: "sizes right", readErr: nil},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, envOpts{})
			reg := newSizeRegistry(t)
			layer := []byte("layer bytes, a few of them")
			ld := reg.blob(layer)
			p := e.f.Platform()
			cfg, _ := json.Marshal(map[string]any{
				"architecture": p.Architecture, "os": p.OS, "variant": p.Variant,
				"rootfs": map[string]any{"type": "layers", "diff_ids": []blob.Digest{ld}},
			})
			cd := reg.blob(cfg)
			size := func(f func(int64) int64, n int) int64 {
				if f == nil {
					return int64(n)
				}
				return f(int64(n))
			}
			m := map[string]any{
				"schemaVersion": 2, "mediaType": ociManifest,
				"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": size(tc.configSize, len(cfg))},
				"layers": []map[string]any{{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": size(tc.layerSize, len(layer))}},
			}
			if tc.entrySize == nil {
				reg.doc(t, "latest", ociManifest, m)
			} else {
				md, n := reg.doc(t, "child", ociManifest, m)
				reg.doc(t, "latest", ociIndex, map[string]any{
					"schemaVersion": 2, "mediaType": ociIndex,
					"manifests": []map[string]any{{
						"mediaType": ociManifest, "digest": md, "size": tc.entrySize(int64(n)),
						"platform": map[string]string{"os": p.OS, "architecture": p.Architecture, "variant": p.Variant},
					}},
				})
			}

			img, err := e.f.FetchImage(ctx, reg.host+"/size/app:latest", credential.Anonymous)
			if errors.Is(err, safego.ErrPanic) {
				t.Fatalf("FetchImage recovered a panic: %v", err)
			}
			if tc.fetchErr != nil {
				if !errors.Is(err, tc.fetchErr) {
					t.Fatalf("FetchImage: %v, want %v", err, tc.fetchErr)
				}
				if errors.Is(tc.fetchErr, manifest.ErrInvalid) && !strings.Contains(err.Error(), "size") {
					t.Errorf("error %q does not say the size is what is wrong", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("FetchImage: %v", err)
			}
			rc, err := img.Layers()[0].Open(ctx)
			var got []byte
			if err == nil {
				got, err = io.ReadAll(rc)
				rc.Close()
			}
			if errors.Is(err, safego.ErrPanic) {
				t.Fatalf("reading the layer recovered a panic: %v", err)
			}
			if tc.readErr == nil {
				if err != nil || string(got) != string(layer) {
					t.Fatalf("layer: %q, %v", got, err)
				}
				return
			}
			if !errors.Is(err, tc.readErr) {
				t.Fatalf("reading the layer: %v, want %v", err, tc.readErr)
			}
		})
	}
}
