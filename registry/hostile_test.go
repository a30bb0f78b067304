package registry_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/registry"
)

// Tests with registries that stall, trickle, never end and lie, for every
// body the client reads: the /v2/ ping, the token response, manifests and
// blobs. Every call must end within the configured bounds, with an error
// that names the registry and what it did, having read a bounded number of
// bytes. The bounds are tiny so that the tests are quick; the only
// wall-clock limit is a generous context deadline that keeps a regression
// from hanging the suite (a call that reaches it fails the test).

// How a hostile server sends a body.
type behaviour int

const (
	honest  behaviour = iota
	stall             // a correct Content-Length, part of the body, then nothing (the connection held open)
	trickle           // a correct Content-Length, then one byte per tick
	endless           // no Content-Length, and a body that never ends
	lie               // a Content-Length of 1 TiB, and a body that never ends
)

func (b behaviour) String() string {
	return [...]string{"honest", "stall", "trickle", "endless", "lie"}[b]
}

const (
	trickleTick = 20 * time.Millisecond
	stallSend   = 1000 // at most this many bytes before a stall
)

// hostileRegistry serves one image (repository "app", tag "v1", one blob)
// on loopback, with one target ("ping", "token", "manifest" or "blob")
// misbehaving. With token set, the ping answers 401 with a Bearer
// challenge whose realm is the server itself.
type hostileRegistry struct {
	host     string
	manifest []byte
	layer    []byte
	layerD   blob.Digest

	token      bool
	target     string
	how        behaviour
	times      int // responses of target that misbehave; 0 = all
	pingStatus int // 0 = 200 (or 401 with token)

	mu   sync.Mutex
	reqs map[string]int // by target
}

func newHostileRegistry(t *testing.T, target string, how behaviour) *hostileRegistry {
	t.Helper()
	h := &hostileRegistry{target: target, how: how, reqs: map[string]int{}}
	h.layer = bytes.Repeat([]byte("layer-bytes-"), 8<<10/12)
	h.layerD = blob.FromBytes(h.layer)
	h.manifest = fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[]}`, h.layerD, len(h.layer))
	srv := httptest.NewServer(http.HandlerFunc(h.serve))
	t.Cleanup(srv.Close)
	h.host = strings.TrimPrefix(srv.URL, "http://")
	return h
}

func (h *hostileRegistry) requests(target string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.reqs[target]
}

// behaviourFor counts a request for target and says how to answer it.
func (h *hostileRegistry) behaviourFor(target string) behaviour {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reqs[target]++
	if target != h.target || (h.times > 0 && h.reqs[target] > h.times) {
		return honest
	}
	return h.how
}

func (h *hostileRegistry) serve(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case p == "/v2/" || p == "/v2":
		code := http.StatusOK
		if h.token {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="hostile"`, h.host))
			code = http.StatusUnauthorized
		}
		if h.pingStatus != 0 {
			code = h.pingStatus
		}
		h.send(w, r, h.behaviourFor("ping"), code, nil)
	case p == "/token":
		w.Header().Set("Content-Type", "application/json")
		h.send(w, r, h.behaviourFor("token"), http.StatusOK, []byte(`{"token":"hostile-token","expires_in":300}`))
	case p == "/v2/app/manifests/v1" || p == "/v2/app/manifests/"+string(blob.FromBytes(h.manifest)):
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", string(blob.FromBytes(h.manifest)))
		h.send(w, r, h.behaviourFor("manifest"), http.StatusOK, h.manifest)
	case p == "/v2/app/blobs/"+string(h.layerD):
		how := h.behaviourFor("blob")
		body, code := h.layer, http.StatusOK
		if rng := r.Header.Get("Range"); rng != "" {
			var start, end int
			if _, err := fmt.Sscanf(rng, "bytes=%d-%d", &start, &end); err != nil || start > end || end >= len(h.layer) {
				http.Error(w, "bad range", http.StatusRequestedRangeNotSatisfiable)
				return
			}
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, len(h.layer)))
			body, code = h.layer[start:end+1], http.StatusPartialContent
		}
		h.send(w, r, how, code, body)
	default:
		http.NotFound(w, r)
	}
}

// send writes body with status code the way how says. A misbehaving body
// with nothing to send (the ping's) sends filler instead.
func (h *hostileRegistry) send(w http.ResponseWriter, r *http.Request, how behaviour, code int, body []byte) {
	ctx := r.Context()
	flush := w.(http.Flusher).Flush
	if how != honest && len(body) == 0 {
		body = bytes.Repeat([]byte{'x'}, 1<<20)
	}
	switch how {
	case honest:
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(code)
		w.Write(body)
	case stall:
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(code)
		w.Write(body[:min(len(body)/2, stallSend)])
		flush()
		<-ctx.Done()
	case trickle:
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(code)
		flush()
		for i := range body {
			select {
			case <-ctx.Done():
				return
			case <-time.After(trickleTick):
			}
			if _, err := w.Write(body[i : i+1]); err != nil {
				return
			}
			flush()
		}
	case endless, lie:
		if how == lie {
			w.Header().Set("Content-Length", strconv.FormatInt(1<<40, 10))
		}
		w.WriteHeader(code)
		chunk := bytes.Repeat([]byte{'x'}, 32<<10)
		for ctx.Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}
}

// hostileConfig makes the bounds tiny: a body may wait 200 ms for a byte
// and must bring 1000 B/s over each 300 ms of waiting.
func hostileConfig(c *registry.Config) {
	c.IdleTimeout = 200 * time.Millisecond
	c.MinRate = 1000
	c.MinRateWindow = 300 * time.Millisecond
	c.MaxAttempts = 2
	c.MaxResumes = 2
	c.MaxManifestSize = 64 << 10
}

// sanityDeadline is far above every bound in hostileConfig; a call that
// reaches it did not end on its own.
const sanityDeadline = 30 * time.Second

func TestHostileRegistries(t *testing.T) {
	const slack = 16 << 10 // the honest bodies of the other requests
	pingCap := int64(64 << 10)
	tokenCap := int64(64<<10) + 1
	manifestCap := int64(64<<10) + 1
	var blobSize int64 // set below

	for _, tc := range []struct {
		desc       string
		target     string
		how        behaviour
		token      bool
		pingStatus int
		call       string // "manifest" or "blob"
		maxBytes   int64  // bound on the body bytes the client read, beyond slack
		wantErr    error  // nil: the call succeeds
		wantMsg    string // in the error, besides the host
		wantStall  string // the stall metric reason that must have counted, if any
	}{
		// The ping's body is never needed: whatever it does costs the
		// bounds, then the call goes on.
		{desc: "ping body stalls", target: "ping", how: stall, call: "manifest", maxBytes: stallSend, wantStall: "idle"},
		{desc: "ping body trickles", target: "ping", how: trickle, call: "manifest", maxBytes: 1 << 10, wantStall: "slow"},
		{desc: "ping body never ends", target: "ping", how: endless, call: "manifest", maxBytes: pingCap},
		{desc: "ping body lies about its length", target: "ping", how: lie, call: "manifest", maxBytes: pingCap},
		// A ping that fails has its body read for the error.
		{desc: "failing ping stalls", target: "ping", how: stall, pingStatus: http.StatusNotFound, call: "manifest", maxBytes: stallSend, wantErr: registry.ErrStalled, wantMsg: "sent no data for 200ms", wantStall: "idle"},
		{desc: "failing ping trickles", target: "ping", how: trickle, pingStatus: http.StatusNotFound, call: "manifest", maxBytes: 1 << 10, wantErr: registry.ErrStalled, wantMsg: "below the minimum of", wantStall: "slow"},

		{desc: "token response stalls", target: "token", how: stall, token: true, call: "manifest", maxBytes: stallSend, wantErr: registry.ErrStalled, wantMsg: "GET " + "%HOST%/token sent no data for 200ms after", wantStall: "idle"},
		{desc: "token response trickles", target: "token", how: trickle, token: true, call: "manifest", maxBytes: 1 << 10, wantErr: registry.ErrStalled, wantMsg: "below the minimum of", wantStall: "slow"},
		{desc: "token response never ends", target: "token", how: endless, token: true, call: "manifest", maxBytes: tokenCap, wantErr: registry.ErrUnreachable, wantMsg: "byte limit"},
		{desc: "token response lies about its length", target: "token", how: lie, token: true, call: "blob", maxBytes: tokenCap, wantErr: registry.ErrUnreachable, wantMsg: "byte limit"},

		{desc: "manifest stalls", target: "manifest", how: stall, call: "manifest", maxBytes: stallSend, wantErr: registry.ErrStalled, wantMsg: "/v2/app/manifests/v1 sent no data for 200ms after", wantStall: "idle"},
		{desc: "manifest trickles", target: "manifest", how: trickle, call: "manifest", maxBytes: 1 << 10, wantErr: registry.ErrStalled, wantMsg: "below the minimum of", wantStall: "slow"},
		{desc: "manifest never ends", target: "manifest", how: endless, call: "manifest", maxBytes: manifestCap, wantErr: registry.ErrTooLarge, wantMsg: "more than 65536 bytes"},
		{desc: "manifest lies about its length", target: "manifest", how: lie, call: "manifest", maxBytes: 0, wantErr: registry.ErrTooLarge, wantMsg: "1099511627776 bytes"},

		// A blob that stalls or trickles is resumed, and stalls again,
		// until MaxResumes.
		{desc: "blob stalls", target: "blob", how: stall, call: "blob", maxBytes: 3 * stallSend, wantErr: registry.ErrStalled, wantMsg: "broken after 3000 bytes (2 resumes)", wantStall: "idle"},
		{desc: "blob stalls behind a token", target: "blob", how: stall, token: true, call: "blob", maxBytes: 3 * stallSend, wantErr: registry.ErrStalled, wantMsg: "sent no data for 200ms after", wantStall: "idle"},
		{desc: "blob trickles", target: "blob", how: trickle, call: "blob", maxBytes: 3 << 10, wantErr: registry.ErrStalled, wantMsg: "below the minimum of", wantStall: "slow"},
		{desc: "blob never ends", target: "blob", how: endless, call: "blob", maxBytes: -1, wantErr: blob.ErrMismatch},
		{desc: "blob lies about its length", target: "blob", how: lie, call: "blob", maxBytes: 64 << 10, wantErr: blob.ErrMismatch, wantMsg: "Content-Length disagrees"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			h := newHostileRegistry(t, tc.target, tc.how)
			h.token, h.pingStatus = tc.token, tc.pingStatus
			blobSize = int64(len(h.layer))
			r := newClient(t, func(c *registry.Config) { hostileConfig(c); c.MetricHosts = []string{h.host} })
			ctx, cancel := context.WithTimeout(context.Background(), sanityDeadline)
			defer cancel()
			ref := mustRef(t, h.host+"/app:v1")

			var err error
			switch tc.call {
			case "manifest":
				var b []byte
				b, _, err = r.c.Manifest(ctx, ref, nil)
				if err == nil && !bytes.Equal(b, h.manifest) {
					t.Fatalf("Manifest returned other bytes")
				}
			case "blob":
				var rc io.ReadCloser
				rc, err = r.c.Blob(ctx, ref.Repo(), h.layerD, blobSize, nil)
				if err == nil {
					var b []byte
					b, err = io.ReadAll(rc)
					rc.Close()
					if err == nil && !bytes.Equal(b, h.layer) {
						t.Fatalf("Blob returned other bytes")
					}
				}
			}
			t.Logf("err: %v", err)
			if ctx.Err() != nil {
				t.Fatalf("the call ran into the %s sanity deadline: %v", sanityDeadline, err)
			}
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("err = %v, want success", err)
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			case tc.wantErr != nil && !strings.Contains(err.Error(), h.host):
				t.Fatalf("err = %v, does not name the registry %s", err, h.host)
			case tc.wantErr != nil && !strings.Contains(err.Error(), strings.ReplaceAll(tc.wantMsg, "%HOST%", h.host)):
				t.Fatalf("err = %v, want it to say %q", err, tc.wantMsg)
			}
			if h.requests(tc.target) == 0 {
				t.Fatalf("the %s was never asked for", tc.target)
			}

			limit := tc.maxBytes
			if limit < 0 { // the blob's own size, plus a read buffer past it
				limit = blobSize + 64<<10
			}
			read := r.metric(t, "strata_registry_response_bytes_total", map[string]string{"host": h.host})
			if read > float64(limit+slack) {
				t.Fatalf("the client read %.0f body bytes from %s, want at most %d", read, tc.target, limit+slack)
			}
			if tc.wantStall != "" {
				if n := r.metric(t, "strata_registry_stalled_responses_total", map[string]string{"host": h.host, "reason": tc.wantStall}); n < 1 {
					t.Fatalf("stalled_responses_total{reason=%q} = %v, want at least 1\n%s", tc.wantStall, n, r.dump(t))
				}
			}
			if tc.target == "blob" && (tc.how == stall || tc.how == trickle) {
				if n := h.requests("blob"); n != 1+2 {
					t.Fatalf("blob requests %d, want 3 (1 + MaxResumes)", n)
				}
			}
		})
	}
}

// A blob that stalls once is resumed where it stopped and completes: a
// stall takes the path of a broken connection.
func TestHostileBlobStallResumes(t *testing.T) {
	for _, how := range []behaviour{stall, trickle} {
		t.Run(how.String(), func(t *testing.T) {
			h := newHostileRegistry(t, "blob", how)
			h.times = 1
			r := newClient(t, hostileConfig)
			ctx, cancel := context.WithTimeout(context.Background(), sanityDeadline)
			defer cancel()
			ref := mustRef(t, h.host+"/app:v1")
			rc, err := r.c.Blob(ctx, ref.Repo(), h.layerD, int64(len(h.layer)), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if err != nil || !bytes.Equal(got, h.layer) {
				t.Fatalf("err %v, equal %v", err, bytes.Equal(got, h.layer))
			}
			if n := h.requests("blob"); n != 2 {
				t.Fatalf("blob requests %d, want 2 (the stalled one and one resume)", n)
			}
			if n := r.metric(t, "strata_registry_blob_resumes_total", nil); n != 1 {
				t.Fatalf("resumes %v, want 1", n)
			}
			if n := r.metric(t, "strata_registry_stalled_responses_total", nil); n != 1 {
				t.Fatalf("stalls %v, want 1", n)
			}
		})
	}
}

// The idle and rate rules count only the time the client waits for the
// network: a caller that stops reading for longer than the idle timeout,
// and so reads at a low average rate, is not blamed on the registry.
func TestHostileCallerPauseIsNotAStall(t *testing.T) {
	h := newHostileRegistry(t, "", honest)
	r := newClient(t, hostileConfig)
	ctx, cancel := context.WithTimeout(context.Background(), sanityDeadline)
	defer cancel()
	ref := mustRef(t, h.host+"/app:v1")
	rc, err := r.c.Blob(ctx, ref.Repo(), h.layerD, int64(len(h.layer)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var got []byte
	buf := make([]byte, 100)
	for {
		n, err := rc.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
		// 100 bytes per 250 ms is 400 B/s, below MinRate over the
		// window, and each pause is longer than IdleTimeout.
		time.Sleep(250 * time.Millisecond)
		if len(got) >= 500 {
			break
		}
	}
	rest, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(append(got, rest...), h.layer) {
		t.Fatalf("err %v", err)
	}
	if n := r.metric(t, "strata_registry_stalled_responses_total", nil); n != 0 {
		t.Fatalf("stalls %v, want 0", n)
	}
	if n := h.requests("blob"); n != 1 {
		t.Fatalf("blob requests %d, want 1", n)
	}
}

// A registry answering 503 with a Retry-After beyond MaxRetryAfter is not
// waited for: the call fails at once, naming the registry and the wait it
// asked for, so the caller can go elsewhere.
func TestHostileRetryAfterBeyondMax(t *testing.T) {
	for _, tc := range []struct {
		desc       string
		retryAfter string
		wantWaits  int
	}{
		{"59 s is beyond the default 10 s", "59", 0},
		{"a date an hour away", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat), 0},
		{"5 s is waited for, then the attempts run out", "5", 1},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			var gets int
			var mu sync.Mutex
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				mu.Lock()
				gets++
				mu.Unlock()
				w.Header().Set("Retry-After", tc.retryAfter)
				http.Error(w, "busy", http.StatusServiceUnavailable)
			}))
			t.Cleanup(srv.Close)
			host := strings.TrimPrefix(srv.URL, "http://")
			r := newClient(t, func(c *registry.Config) { c.MaxAttempts = 2 })
			_, _, err := r.c.Manifest(context.Background(), mustRef(t, host+"/app:v1"), nil)
			if !errors.Is(err, registry.ErrUnreachable) || !strings.Contains(err.Error(), host) {
				t.Fatalf("err = %v, want ErrUnreachable naming %s", err, host)
			}
			if w := r.sleeps.all(); len(w) != tc.wantWaits || (len(w) == 1 && w[0] != 5*time.Second) {
				t.Fatalf("waits %v, want %d", w, tc.wantWaits)
			}
			if tc.wantWaits == 0 {
				if gets != 1 || !strings.Contains(err.Error(), "Retry-After") || !strings.Contains(err.Error(), "longer than the 10s") {
					t.Fatalf("GETs %d, err %v: want one GET and an error about the Retry-After", gets, err)
				}
			} else if gets != 2 {
				t.Fatalf("GETs %d, want 2", gets)
			}
		})
	}
}

// A mirror whose blob stalls is not resumed against: the rest of the blob
// comes from the origin, with one Range request, and the stream verifies.
func TestHostileMirrorStallFailsOver(t *testing.T) {
	mirror := newHostileRegistry(t, "blob", stall)
	origin := newHostileRegistry(t, "", honest)
	r := newClient(t, func(c *registry.Config) {
		hostileConfig(c)
		c.Mirrors = map[string][]registry.Mirror{origin.host: {{Endpoint: mirror.host}}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), sanityDeadline)
	defer cancel()
	ref := mustRef(t, origin.host+"/app:v1")
	rc, err := r.c.Blob(ctx, ref.Repo(), origin.layerD, int64(len(origin.layer)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, origin.layer) {
		t.Fatalf("err %v, equal %v", err, bytes.Equal(got, origin.layer))
	}
	if m, o := mirror.requests("blob"), origin.requests("blob"); m != 1 || o != 1 {
		t.Fatalf("blob requests: mirror %d, origin %d; want 1 and 1", m, o)
	}
	if n := r.metric(t, "strata_registry_mirror_fallbacks_total", map[string]string{"mirror": mirror.host}); n != 1 {
		t.Fatalf("mirror fallbacks %v, want 1", n)
	}
}
