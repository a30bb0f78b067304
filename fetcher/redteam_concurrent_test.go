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
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/registry/credential"
)

// The attacker's registry holds its own manifest and config, lists the
// victim's layer digests, and answers every layer request with a slow 404.
// Concurrent Authorize/Open calls of the attacker's layer must all fail.
func TestRedteamConcurrentOriginReads(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{})
	a, want := victim(t, e)
	z := "sha256:" + strings.Repeat("0", 64)
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + z + `","` + z + `","` + z + `"]}}`)
	cfgD := blob.FromBytes(cfg)
	var layers []map[string]any
	for _, l := range a.Manifest.Layers {
		layers = append(layers, map[string]any{"mediaType": l.MediaType, "digest": l.Digest, "size": l.Size})
	}
	doc, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfgD, "size": len(cfg)},
		"layers":        layers,
	})
	var blobGets atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
			w.WriteHeader(http.StatusOK)
		case strings.HasPrefix(r.URL.Path, "/v2/evil/app/manifests/"):
			w.Header().Set("Docker-Content-Digest", string(blob.FromBytes(doc)))
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Content-Length", fmt.Sprint(len(doc)))
			w.WriteHeader(http.StatusOK)
			if r.Method == http.MethodGet {
				w.Write(doc)
			}
		case r.URL.Path == "/v2/evil/app/blobs/"+string(cfgD):
			w.Header().Set("Content-Length", fmt.Sprint(len(cfg)))
			w.Write(cfg)
		default:
			blobGets.Add(1)
			time.Sleep(30 * time.Millisecond)
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
		}
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	im, err := e.f.FetchImage(ctx, host+"/evil/app:latest", credential.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	l := im.Layers()[1]
	var wg sync.WaitGroup
	var leakedN, authorized atomic.Int64
	for i := 0; i < 24; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if l.Authorize(ctx) == nil {
				authorized.Add(1)
			}
			rc, err := l.Open(ctx)
			if err != nil {
				return
			}
			defer rc.Close()
			b, err := io.ReadAll(rc)
			if err == nil && bytes.Equal(b, want[1]) {
				leakedN.Add(1)
			}
		}()
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	if leakedN.Load() > 0 || authorized.Load() > 0 {
		t.Fatalf("attacker: %d Authorize calls succeeded, %d reads got the victim's private layer (%d blob GETs at the attacker's registry)", authorized.Load(), leakedN.Load(), blobGets.Load())
	}
}
