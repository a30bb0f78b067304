package registrytest

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Fault is one misbehaviour the Proxy injects. It applies to requests that
// match Method and Kind (empty matches any) and, if Ranged is set, carry a
// Range header; it applies Times times (0 = to every matching request) and
// then is used up. Exactly one action applies, checked in this order:
// Delay (then the rest), Abort, Status, RedirectTo, TruncateAfter, Corrupt.
type Fault struct {
	Method string // "GET", "HEAD", ...; "" = any
	Kind   string // "manifest", "blob", "ping", ...; "" = any
	Ranged bool   // only requests with a Range header
	Times  int

	// Delay holds the request this long before acting (aborted when the
	// client goes away), then proxies it unless another action is set.
	Delay time.Duration
	// Status answers with this status instead of proxying, with
	// RetryAfter as the Retry-After header if set.
	Status     int
	RetryAfter string
	// RedirectTo answers 307 with this Location.
	RedirectTo string
	// TruncateAfter proxies the response but aborts the connection after
	// this many body bytes (the Content-Length still promises them all).
	TruncateAfter int64
	// Corrupt proxies the response with its first body byte flipped.
	Corrupt bool
	// DropDigestHeader removes Docker-Content-Digest from the response.
	DropDigestHeader bool
	// SetHeaders overrides response headers of the proxied response.
	SetHeaders map[string]string
	// Chunked removes Content-Length from the proxied response, so it is
	// sent chunked and the client cannot know its length in advance.
	Chunked bool
	// StripRange removes the Range header before proxying, like a
	// registry that does not support ranges.
	StripRange bool
	// Abort drops the connection without any response (a reset).
	Abort bool
}

// Proxy is a reverse proxy in front of a registry that counts requests
// (Counter) and injects Faults. It listens on 127.0.0.1 and is closed in
// t.Cleanup. It is safe for concurrent use.
type Proxy struct {
	Counter
	host   string
	mu     sync.Mutex
	faults []*Fault
}

// NewProxy starts a Proxy forwarding to target ("127.0.0.1:port").
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	p := &Proxy{}
	tu := &url.URL{Scheme: "http", Host: target}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(tu)
			r.Out.Host = r.In.Host
		},
		FlushInterval: -1,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.record(r)
		f := p.take(r)
		if f == nil {
			rp.ServeHTTP(w, r)
			return
		}
		if f.Delay > 0 {
			select {
			case <-time.After(f.Delay):
			case <-r.Context().Done():
				return
			}
		}
		if f.StripRange {
			r.Header.Del("Range")
		}
		switch {
		case f.Abort:
			panic(http.ErrAbortHandler)
		case f.Status != 0:
			if f.RetryAfter != "" {
				w.Header().Set("Retry-After", f.RetryAfter)
			}
			w.WriteHeader(f.Status)
		case f.RedirectTo != "":
			http.Redirect(w, r, f.RedirectTo, http.StatusTemporaryRedirect)
		default:
			rp.ServeHTTP(&faultWriter{ResponseWriter: w, f: f}, r)
		}
	}))
	t.Cleanup(srv.Close)
	p.host = strings.TrimPrefix(srv.URL, "http://")
	return p
}

// Host returns the proxy's "127.0.0.1:port".
func (p *Proxy) Host() string { return p.host }

// Inject adds a fault; faults are matched in the order they were added.
func (p *Proxy) Inject(f Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fc := f
	p.faults = append(p.faults, &fc)
}

// Clear removes all faults.
func (p *Proxy) Clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = nil
}

func (p *Proxy) take(r *http.Request) *Fault {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, f := range p.faults {
		if f.Method != "" && f.Method != r.Method || f.Kind != "" && f.Kind != Kind(r.URL.Path) || f.Ranged && r.Header.Get("Range") == "" {
			continue
		}
		if f.Times > 0 {
			f.Times--
			if f.Times == 0 {
				p.faults = append(p.faults[:i], p.faults[i+1:]...)
			}
		}
		return f
	}
	return nil
}

// faultWriter applies TruncateAfter, Corrupt, DropDigestHeader, SetHeaders
// and Chunked to a proxied response.
type faultWriter struct {
	http.ResponseWriter
	f       *Fault
	n       int64
	flipped bool
}

func (w *faultWriter) WriteHeader(code int) {
	if w.f.DropDigestHeader {
		w.Header().Del("Docker-Content-Digest")
	}
	for k, v := range w.f.SetHeaders {
		w.Header().Set(k, v)
	}
	if w.f.Chunked {
		w.Header().Del("Content-Length")
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *faultWriter) Write(b []byte) (int, error) {
	if w.f.Corrupt && !w.flipped && len(b) > 0 {
		c := append([]byte(nil), b...)
		c[0] ^= 0xff
		b = c
		w.flipped = true
	}
	if w.f.TruncateAfter > 0 && w.n+int64(len(b)) > w.f.TruncateAfter {
		keep := w.f.TruncateAfter - w.n
		w.ResponseWriter.Write(b[:keep])
		w.n += keep
		if fl, ok := w.ResponseWriter.(http.Flusher); ok {
			fl.Flush()
		}
		// Abort the connection: the client sees a body shorter than its
		// Content-Length.
		panic(http.ErrAbortHandler)
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func (w *faultWriter) Flush() {
	if fl, ok := w.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
}
