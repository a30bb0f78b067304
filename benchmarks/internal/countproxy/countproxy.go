// Package countproxy is a counting reverse proxy for registry traffic: it
// forwards everything to one upstream registry and counts blob GETs per
// digest, so a benchmark can say how many times each blob was downloaded.
package countproxy

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
)

// Proxy is a running counting proxy on 127.0.0.1. It is safe for
// concurrent use.
type Proxy struct {
	// Host is the proxy's "127.0.0.1:port".
	Host string

	srv      *http.Server
	mu       sync.Mutex
	blobGets map[string]int
	requests int
	first    []string
}

// Start starts a proxy in front of upstream ("127.0.0.1:port", plain HTTP)
// listening on listen ("127.0.0.1:port"; "" picks a free port).
func Start(upstream, listen string) (*Proxy, error) {
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	if host, _, err := net.SplitHostPort(listen); err != nil || host != "127.0.0.1" {
		return nil, fmt.Errorf("countproxy: listen address %q is not 127.0.0.1:port", listen)
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: upstream})
	rp.Transport = &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}
	// The proxy is the harness's, not the code under test's: 256 KiB copies
	// (the default is 32 KiB) keep its share of the CPU small.
	rp.BufferPool = bufferPool{}
	p := &Proxy{Host: l.Addr().String(), blobGets: map[string]int{}}
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.count(r)
		rp.ServeHTTP(w, r)
	})}
	go p.srv.Serve(l)
	return p, nil
}

func (p *Proxy) count(r *http.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests++
	if len(p.first) < 20 {
		p.first = append(p.first, r.Method+" "+r.URL.Path)
	}
	if r.Method != http.MethodGet {
		return
	}
	if i := strings.LastIndex(r.URL.Path, "/blobs/"); i >= 0 {
		p.blobGets[r.URL.Path[i+len("/blobs/"):]]++
	}
}

// BlobGets returns the number of GETs seen per blob digest.
func (p *Proxy) BlobGets() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.blobGets))
	for k, v := range p.blobGets {
		out[k] = v
	}
	return out
}

// Requests returns the number of requests of any kind seen.
func (p *Proxy) Requests() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests
}

// First returns the first 20 requests seen since the last Reset, as
// "METHOD path", for error messages.
func (p *Proxy) First() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.first...)
}

// Reset forgets the counts.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blobGets, p.requests, p.first = map[string]int{}, 0, nil
}

// Close stops the proxy.
func (p *Proxy) Close() error { return p.srv.Close() }

// bufferPool hands the reverse proxy 256 KiB copy buffers.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { return make([]byte, 256<<10) }}

func (bufferPool) Get() []byte  { return buffers.Get().([]byte) }
func (bufferPool) Put(b []byte) { buffers.Put(b) }
