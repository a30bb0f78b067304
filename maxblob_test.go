package strata

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/registry/credential"
)

// sizeLiar is a registry serving "app:v1", one image whose only layer's
// descriptor declares declared bytes while the blob endpoint sends body
// (chunked, no Content-Length). It counts the layer's GETs.
type sizeLiar struct {
	host string
	mu   sync.Mutex
	gets int
}

func newSizeLiar(t *testing.T, body []byte, declared int64) *sizeLiar {
	t.Helper()
	layer := string(blob.FromBytes(body))
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + layer + `"]}}`)
	doc, err := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob.FromBytes(cfg), "size": len(cfg)},
		"layers": []map[string]any{{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": declared}},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := &sizeLiar{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p := r.URL.Path; {
		case p == "/v2/":
		case strings.HasPrefix(p, "/v2/app/manifests/"):
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Docker-Content-Digest", string(blob.FromBytes(doc)))
			w.Write(doc)
		case p == "/v2/app/blobs/"+string(blob.FromBytes(cfg)):
			w.Write(cfg)
		case p == "/v2/app/blobs/"+layer:
			s.mu.Lock()
			s.gets++
			s.mu.Unlock()
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush() // chunked: no Content-Length to check against
			w.Write(body)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	s.host = strings.TrimPrefix(srv.URL, "http://")
	return s
}

func (s *sizeLiar) layerGets() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets
}

// TestMaxBlobSize: the registry client a host builds caps blobs at
// Config.RegistryMaxBlob, defaultRegistryMaxBlob when it is unset: a layer that
// declares more is refused with registry.ErrTooLarge before its body is
// requested.
func TestMaxBlobSize(t *testing.T) {
	small := []byte("a small layer of a few bytes")
	big := []byte(strings.Repeat("a larger layer ", 300))
	tests := []struct {
		desc     string
		cap      Size // Config.RegistryMaxBlob; -1: leave Default()'s
		body     []byte
		declared int64 // the layer descriptor's size
		wantErr  error // nil: the layer reads whole
		wantGets int   // GETs of the layer blob
	}{
		{desc: "default cap, 1 TiB declared (the manifest cap allows it)", cap: -1, body: small, declared: 1 << 40, wantErr: registry.ErrTooLarge},
		{desc: "zero means the default, 1 TiB declared", cap: 0, body: small, declared: 1 << 40, wantErr: registry.ErrTooLarge},
		{desc: "default cap, one byte over it declared", cap: -1, body: small, declared: int64(defaultRegistryMaxBlob) + 1, wantErr: registry.ErrTooLarge},
		{desc: "configured cap, declared above it", cap: 1 << 10, body: big, declared: int64(len(big)), wantErr: registry.ErrTooLarge},
		{desc: "configured cap, blob within it", cap: 1 << 10, body: small, declared: int64(len(small)), wantGets: 1},
		{desc: "default cap, blob within it", cap: -1, body: small, declared: int64(len(small)), wantGets: 1},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			ctx := context.Background()
			liar := newSizeLiar(t, tc.body, tc.declared)
			cfg := testConfig(t)
			cfg.NoAdmin = true
			if tc.cap >= 0 {
				cfg.RegistryMaxBlob = tc.cap
			}
			h, err := Open(ctx, withMetrics(cfg, prometheus.NewRegistry()))
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			img, err := h.Fetcher().FetchImage(ctx, liar.host+"/app:v1", credential.Anonymous)
			if err != nil {
				t.Fatal(err)
			}
			rc, err := img.Layers()[0].Open(ctx)
			var got []byte
			if err == nil {
				got, err = io.ReadAll(rc)
				rc.Close()
			}
			if tc.wantErr == nil {
				if err != nil || string(got) != string(tc.body) {
					t.Fatalf("read %q, %v; want the layer", got, err)
				}
			} else if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if errors.Is(tc.wantErr, registry.ErrTooLarge) && !strings.Contains(err.Error(), "cap") {
				t.Errorf("error %q does not state the cap", err)
			}
			if n := liar.layerGets(); n != tc.wantGets {
				t.Errorf("%d GETs of the layer, want %d", n, tc.wantGets)
			}
		})
	}
}

func TestValidateMaxBlobSize(t *testing.T) {
	cfg := Default()
	cfg.RegistryMaxBlob = -1
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "max-blob-size") {
		t.Fatalf("negative max-blob-size: %v", err)
	}
	if Default().RegistryMaxBlob != defaultRegistryMaxBlob {
		t.Fatalf("Default() has max-blob-size %s, want %s", Default().RegistryMaxBlob, defaultRegistryMaxBlob)
	}
}
