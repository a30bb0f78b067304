package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/internal/admin"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry/credential"
)

// holdLayer wraps a registry so that a GET of the blob named digest sends
// its headers and half of its body, then waits for release.
func holdLayer(digest string, release <-chan struct{}) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+digest) {
				h.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			body := rec.Body.Bytes()
			_, _ = w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
			_, _ = w.Write(body[len(body)/2:])
		})
	}
}

// countingRead is what a Reader hook saw of one layer read.
type countingRead struct {
	digest blob.Digest
	size   int64
	source string
	n      int64
	eof    bool
}

type countingReader struct {
	mu *sync.Mutex
	c  *countingRead
	r  io.Reader
}

func (r countingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.mu.Lock()
	r.c.n += int64(n)
	r.c.eof = r.c.eof || err == io.EOF
	r.mu.Unlock()
	return n, err
}

// TestWarmThroughClientReportsProgress warms an image through the admin
// socket and checks that the hooks see the holder's progress while it
// works: the holder is kept from finishing a layer until the client's
// Reader hook has been called for it, and every read counts the layer's
// bytes and ends.
func TestWarmThroughClientReportsProgress(t *testing.T) {
	// A deadlock guard: without progress during the warm, the holder waits
	// for a release that never comes.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	img, err := random.Image(64<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	held, err := ls[1].Digest()
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var releaseOnce sync.Once
	reg := registrytest.InProcess(t, holdLayer(held.String(), release))
	registrytest.Push(t, reg, "app:v1", img, nil)
	h, err := strata.Open(ctx, withMetrics(testConfig(t), prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c, err := admin.Dial(ctx, h.Config().Root)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	var mu sync.Mutex
	var events []string
	var reads []*countingRead
	var layers []admin.FetchRecord
	hooks := &admin.WarmHooks{
		Documents: func(recs []admin.FetchRecord) {
			mu.Lock()
			defer mu.Unlock()
			events = append(events, "documents")
		},
		Reader: func(d blob.Digest, size int64, source string, r io.Reader) io.Reader {
			mu.Lock()
			defer mu.Unlock()
			events = append(events, "read")
			cr := &countingRead{digest: d, size: size, source: source}
			reads = append(reads, cr)
			if d.String() == held.String() {
				releaseOnce.Do(func() { close(release) })
			}
			return countingReader{mu: &mu, c: cr, r: r}
		},
		Layer: func(l *fetcher.Layer, rec admin.FetchRecord, err error) {
			mu.Lock()
			defer mu.Unlock()
			if l != nil || err != nil {
				t.Errorf("Layer hook: layer %v, err %v; want nil, nil", l, err)
			}
			events = append(events, "layer")
			layers = append(layers, rec)
		},
	}
	res, err := c.Warm(ctx, reg+"/app:v1", credential.Anonymous, 2, hooks)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) == 0 || events[0] != "documents" {
		t.Errorf("hook calls %v, want documents first", events)
	}
	if len(reads) != 2 || len(layers) != 2 {
		t.Fatalf("%d reads and %d layer records, want 2 and 2", len(reads), len(layers))
	}
	want := map[string]int64{}
	for _, l := range ls {
		d, _ := l.Digest()
		size, _ := l.Size()
		want[d.String()] = size
	}
	for _, r := range reads {
		if want[r.digest.String()] != r.size || r.n != r.size || !r.eof || r.source != "registry" {
			t.Errorf("read of %s: size %d, read %d, EOF %v, source %q; want %d bytes read to EOF from the registry", r.digest, r.size, r.n, r.eof, r.source, want[r.digest.String()])
		}
	}
	for _, rec := range layers {
		if want[rec.Digest] != rec.Bytes || rec.Kind != "layer" {
			t.Errorf("layer record %+v, want %d bytes", rec, want[rec.Digest])
		}
	}
	if len(res.Blobs) != 4 || res.Digest == "" || res.Platform == "" {
		t.Errorf("result %+v", res)
	}

	// An old client (no Accept) still gets one JSON answer.
	var old admin.FetchResult
	if err := c.Do(ctx, http.MethodPost, "/v1/warm", admin.WarmRequest{Image: reg + "/app:v1"}, &old); err != nil {
		t.Fatalf("warm without Accept: %v", err)
	}
	if old.Digest != res.Digest || len(old.Blobs) != 4 {
		t.Errorf("warm without Accept: %+v", old)
	}
}

// TestWarmThroughClientFails checks that a failure the holder reports at
// the end of the stream comes back as its sentinel, as from strata.Host.Warm.
func TestWarmThroughClientFails(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.InProcess(t)
	h, err := strata.Open(ctx, withMetrics(testConfig(t), prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c, err := admin.Dial(ctx, h.Config().Root)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, direct := h.Admin().Warm(ctx, reg+"/nothing:v1", credential.Anonymous, 1, nil)
	_, remote := c.Warm(ctx, reg+"/nothing:v1", credential.Anonymous, 1, &admin.WarmHooks{})
	if direct == nil || remote == nil || !errors.Is(remote, blob.ErrNotFound) || remote.Error() != direct.Error() {
		t.Fatalf("warm of a missing image: through the client %v; directly %v; want the same ErrNotFound", remote, direct)
	}
}

// TestWarmFromOldHolder talks to a holder that predates the event stream:
// it ignores the Accept header and answers with one admin.FetchResult, which the
// admin.Client returns, replaying Documents and Layer from it.
func TestWarmFromOldHolder(t *testing.T) {
	root, err := os.MkdirTemp("", "strata-oldholder-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	want := admin.FetchResult{Reference: "registry.example/app:v1", Digest: "sha256:" + strings.Repeat("a", 64), Platform: "linux/amd64",
		Blobs: []admin.FetchRecord{{Kind: "manifest", Digest: "sha256:" + strings.Repeat("a", 64)}, {Kind: "layer", Digest: "sha256:" + strings.Repeat("b", 64), Bytes: 5}}}
	var accept string
	ln, err := net.Listen("unix", filepath.Join(root, admin.SocketName))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/v1/ping" {
			_, _ = w.Write([]byte(`{"root":"x","pid":1}`))
			return
		}
		accept = r.Header.Get("Accept")
		_ = json.NewEncoder(w).Encode(want)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	ctx := context.Background()
	c, err := admin.Dial(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var docs, layers int
	res, err := c.Warm(ctx, want.Reference, credential.Anonymous, 1, &admin.WarmHooks{
		Documents: func(recs []admin.FetchRecord) { docs += len(recs) },
		Reader: func(blob.Digest, int64, string, io.Reader) io.Reader {
			t.Error("Reader called for an answer without progress")
			return nil
		},
		Layer: func(_ *fetcher.Layer, rec admin.FetchRecord, err error) { layers++ },
	})
	if err != nil {
		t.Fatal(err)
	}
	if accept != admin.WarmEventsType {
		t.Errorf("Accept %q, want %q", accept, admin.WarmEventsType)
	}
	if res.Digest != want.Digest || len(res.Blobs) != 2 || docs != 1 || layers != 1 {
		t.Errorf("result %+v, %d documents, %d layers; want %+v, 1, 1", res, docs, layers, want)
	}
}
