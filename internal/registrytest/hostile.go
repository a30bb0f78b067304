package registrytest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Hostile is a registry an attacker controls. It serves, for any
// repository, exactly the documents and blobs a test puts in it (by tag or
// digest), whatever they reference: a manifest that lists digests it holds
// no bytes for, another registry's manifest bytes replayed, blobs that lie.
// A test can hold any blob request open (Gate) to model a registry that
// stalls. It is anonymous unless BasicAuth is set.
type Hostile struct {
	// Host is "127.0.0.1:port".
	Host string

	mu        sync.Mutex
	manifests map[string]hostileDoc // by tag and by digest
	blobs     map[string][]byte     // by digest
	chunked   map[string]bool       // blobs sent without a Content-Length
	gates     map[string]*gate
	user      string
	pass      string
	requests  map[string]int // "GET blob sha256:..." etc.
}

// gate holds blob requests until release is closed.
type gate struct {
	release chan struct{}
	reached chan struct{} // closed when the first request arrived
	once    sync.Once
}

type hostileDoc struct {
	body      []byte
	mediaType string
}

// NewHostile starts a Hostile registry on loopback, closed in t.Cleanup.
func NewHostile(t testing.TB) *Hostile {
	t.Helper()
	h := &Hostile{
		manifests: map[string]hostileDoc{}, blobs: map[string][]byte{}, chunked: map[string]bool{},
		gates: map[string]*gate{}, requests: map[string]int{},
	}
	srv := httptest.NewServer(http.HandlerFunc(h.serve))
	t.Cleanup(func() {
		h.mu.Lock()
		for d, g := range h.gates {
			close(g.release)
			delete(h.gates, d)
		}
		h.mu.Unlock()
		srv.Close()
	})
	h.Host = strings.TrimPrefix(srv.URL, "http://")
	return h
}

// BasicAuth makes every request need these credentials.
func (h *Hostile) BasicAuth(user, pass string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.user, h.pass = user, pass
}

// Manifest serves body with mediaType under tag (if not empty) and under
// its digest, which it returns.
func (h *Hostile) Manifest(tag string, body []byte, mediaType string) string {
	d := digestOf(body)
	h.mu.Lock()
	defer h.mu.Unlock()
	doc := hostileDoc{body: body, mediaType: mediaType}
	h.manifests[d] = doc
	if tag != "" {
		h.manifests[tag] = doc
	}
	return d
}

// Blob serves data under digest (which need not be data's digest).
func (h *Hostile) Blob(digest string, data []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.blobs[digest] = data
}

// BlobChunked serves data under digest without a Content-Length, so the
// client knows its size only from the manifest that lists it.
func (h *Hostile) BlobChunked(digest string, data []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.blobs[digest] = data
	h.chunked[digest] = true
}

// Gate holds every GET of blob digest until the returned release is
// called; reached is closed when the first such request arrived.
func (h *Hostile) Gate(digest string) (reached <-chan struct{}, release func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	g := &gate{release: make(chan struct{}), reached: make(chan struct{})}
	h.gates[digest] = g
	return g.reached, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.gates[digest] == g {
			close(g.release)
			delete(h.gates, digest)
		}
	}
}

// Requests returns how many requests of method for kind ("blob" or
// "manifest") and digest or tag reached the registry.
func (h *Hostile) Requests(method, kind, name string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.requests[method+" "+kind+" "+name]
}

func (h *Hostile) serve(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	user, pass := h.user, h.pass
	h.mu.Unlock()
	if user != "" {
		u, p, ok := r.BasicAuth()
		if !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="hostile"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
	}
	if r.URL.Path == "/v2/" {
		w.WriteHeader(http.StatusOK)
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/v2/")
	i := strings.LastIndex(path, "/")
	if i < 0 {
		http.NotFound(w, r)
		return
	}
	name := path[i+1:]
	switch kind := path[:i]; {
	case strings.HasSuffix(kind, "/manifests"):
		h.count(r.Method, "manifest", name)
		h.mu.Lock()
		doc, ok := h.manifests[name]
		h.mu.Unlock()
		if !ok {
			http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN"}]}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Docker-Content-Digest", digestOf(doc.body))
		w.Header().Set("Content-Type", doc.mediaType)
		w.Header().Set("Content-Length", strconv.Itoa(len(doc.body)))
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			w.Write(doc.body)
		}
	case strings.HasSuffix(kind, "/blobs"):
		h.count(r.Method, "blob", name)
		h.mu.Lock()
		data, ok := h.blobs[name]
		g := h.gates[name]
		h.mu.Unlock()
		if g != nil && r.Method == http.MethodGet {
			g.once.Do(func() { close(g.reached) })
			select {
			case <-g.release:
			case <-r.Context().Done():
			}
		}
		if !ok {
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
			return
		}
		h.mu.Lock()
		chunked := h.chunked[name]
		h.mu.Unlock()
		if !chunked {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		}
		w.Header().Set("Docker-Content-Digest", name)
		w.WriteHeader(http.StatusOK)
		if chunked {
			// Flushed before the body: net/http would otherwise add the
			// Content-Length of a small body itself.
			w.(http.Flusher).Flush()
		}
		if r.Method == http.MethodGet {
			w.Write(data)
		}
	default:
		http.NotFound(w, r)
	}
}

func (h *Hostile) count(method, kind, name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.requests[method+" "+kind+" "+name]++
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// BasicAuthHandler wraps h so that every request needs user and pass
// (for the in-process registry, which has no auth of its own).
func BasicAuthHandler(user, pass string) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, p, ok := r.BasicAuth()
			if !ok || u != user || p != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="registrytest"`)
				http.Error(w, fmt.Sprintf(`{"errors":[{"code":"UNAUTHORIZED","message":%q}]}`, "authentication required"), http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}
