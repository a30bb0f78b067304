package registrytest

import (
	"net/http"
	"strings"
	"sync"
)

// Counter counts registry API requests by method and kind ("manifest",
// "blob", "ping", "upload", "other"), and ranged blob GETs. It is safe for
// concurrent use.
type Counter struct {
	mu     sync.Mutex
	counts map[string]int
	ranged []string
}

// Kind classifies a request path: "ping" for /v2/, "manifest", "blob",
// "upload" (blob uploads) or "other".
func Kind(path string) string {
	switch {
	case path == "/v2/" || path == "/v2":
		return "ping"
	case strings.Contains(path, "/blobs/uploads"):
		return "upload"
	case strings.Contains(path, "/manifests/"):
		return "manifest"
	case strings.Contains(path, "/blobs/"):
		return "blob"
	}
	return "other"
}

func (c *Counter) record(r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.counts == nil {
		c.counts = map[string]int{}
	}
	k := Kind(r.URL.Path)
	c.counts[r.Method+" "+k]++
	if rg := r.Header.Get("Range"); rg != "" && k == "blob" {
		c.ranged = append(c.ranged, rg)
	}
}

// Count returns how many requests with method and kind were seen, e.g.
// Count("GET", "blob").
func (c *Counter) Count(method, kind string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[method+" "+kind]
}

// Ranged returns the Range headers of the blob GETs seen, in order.
func (c *Counter) Ranged() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.ranged...)
}

// Reset forgets everything counted so far.
func (c *Counter) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.counts = nil
	c.ranged = nil
}

// Wrap returns h counting every request it serves.
func (c *Counter) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.record(r)
		h.ServeHTTP(w, r)
	})
}
