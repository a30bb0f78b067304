package registry_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/registry"
)

const testPart = registry.MinPartSize // 64 KiB

// parallelClient is a client reading blobs in parts of testPart, streams
// at once, within memory bytes of read-ahead.
func parallelClient(t *testing.T, streams int, memory int64) *rig {
	return newClient(t, func(c *registry.Config) {
		c.Parallel = registry.ParallelConfig{Streams: streams, PartSize: testPart, Memory: memory}
	})
}

// wantRanges is the Range header of every part of a blob of size bytes.
func wantRanges(size int64) []string {
	var out []string
	for off := int64(0); off < size; off += testPart {
		out = append(out, fmt.Sprintf("bytes=%d-%d", off, min(off+testPart, size)-1))
	}
	return out
}

// sameSet reports whether a and b hold the same strings, in any order.
func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	n := map[string]int{}
	for _, s := range a {
		n[s]++
	}
	for _, s := range b {
		if n[s]--; n[s] < 0 {
			return false
		}
	}
	return true
}

// TestParallelBlob: a blob of several parts is read with one Range request
// per part and delivered verified and whole, on the in-process registry
// and on distribution; with a budget of one part, and with more streams
// than parts; a blob of one part is one plain GET.
func TestParallelBlob(t *testing.T) {
	for _, reg := range []struct {
		name string
		host func(t *testing.T) string
	}{
		{"in-process", func(t *testing.T) string { return registrytest.InProcess(t) }},
		{"distribution", func(t *testing.T) string {
			return registrytest.StartDistribution(t, registrytest.DistributionOptions{}).Host
		}},
	} {
		t.Run(reg.name, func(t *testing.T) {
			host := reg.host(t)
			const size = 10*testPart + 1234
			p := pushImage(t, host, "app/par:v1", size)
			for _, tc := range []struct {
				desc    string
				streams int
				memory  int64
			}{
				{"4 streams", 4, 8 * testPart},
				{"budget of one part", 4, testPart},
				{"more streams than parts", 32, 64 * testPart},
			} {
				t.Run(tc.desc, func(t *testing.T) {
					px := registrytest.NewProxy(t, host)
					r := parallelClient(t, tc.streams, tc.memory)
					got, err := readBlob(t, r.c, mustRef(t, px.Host()+"/app/par:v1"), p.layerD, size)
					if err != nil || !bytes.Equal(got, p.layer) {
						t.Fatalf("read: %v (equal %v)", err, bytes.Equal(got, p.layer))
					}
					want := wantRanges(size)
					if rg := px.Ranged(); !sameSet(rg, want) {
						t.Fatalf("ranged requests %q, want one per part %q", rg, want)
					}
					if n := px.Count("GET", "blob"); n != len(want) {
						t.Fatalf("blob GETs %d, want %d", n, len(want))
					}
					if n := r.metric(t, "strata_registry_blob_parts_total", nil); n != float64(len(want)) {
						t.Fatalf("parts metric %v, want %d", n, len(want))
					}
				})
			}
			t.Run("one part", func(t *testing.T) {
				small := pushImage(t, host, "app/small:v1", testPart)
				px := registrytest.NewProxy(t, host)
				r := parallelClient(t, 4, 8*testPart)
				got, err := readBlob(t, r.c, mustRef(t, px.Host()+"/app/small:v1"), small.layerD, testPart)
				if err != nil || !bytes.Equal(got, small.layer) {
					t.Fatalf("read: %v", err)
				}
				if n, rg := px.Count("GET", "blob"), px.Ranged(); n != 1 || len(rg) != 0 {
					t.Fatalf("blob GETs %d, ranged %q; want one plain GET", n, rg)
				}
			})
		})
	}
}

// TestParallelBlobFaults: what a registry does wrong to a parallel read.
// Parts cut short or reset are read again from where they stopped;
// corrupt parts fail verification; a registry that ignores Range is read
// as one stream; a first part with the wrong Content-Range is refused; a
// caller that closes early leaves no read-ahead running.
func TestParallelBlobFaults(t *testing.T) {
	host := registrytest.InProcess(t)
	const size = 8 * testPart
	p := pushImage(t, host, "app/par:v1", size)
	ref := func(px *registrytest.Proxy) registry.Reference { return mustRef(t, px.Host()+"/app/par:v1") }

	t.Run("parts cut short are read again", func(t *testing.T) {
		px := registrytest.NewProxy(t, host)
		px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Ranged: true, Times: 3, TruncateAfter: 1000})
		r := parallelClient(t, 4, 8*testPart)
		got, err := readBlob(t, r.c, ref(px), p.layerD, size)
		if err != nil || !bytes.Equal(got, p.layer) {
			t.Fatalf("read: %v (equal %v)", err, bytes.Equal(got, p.layer))
		}
		// Each cut part asks once more for exactly its rest.
		if n := px.Count("GET", "blob"); n != 8+3 {
			t.Fatalf("blob GETs %d, want 11 (8 parts, 3 read again)", n)
		}
		for _, rg := range px.Ranged() {
			var start, end int64
			if _, err := fmt.Sscanf(rg, "bytes=%d-%d", &start, &end); err != nil || start/testPart != end/testPart || (end+1)%testPart != 0 {
				t.Fatalf("ranged request %q does not run to the end of one part", rg)
			}
		}
	})
	t.Run("a reset part is read again", func(t *testing.T) {
		px := registrytest.NewProxy(t, host)
		px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Ranged: true, Times: 1, Abort: true})
		r := parallelClient(t, 4, 8*testPart)
		got, err := readBlob(t, r.c, ref(px), p.layerD, size)
		if err != nil || !bytes.Equal(got, p.layer) {
			t.Fatalf("read: %v (equal %v)", err, bytes.Equal(got, p.layer))
		}
	})
	t.Run("a registry ignoring Range is read as one stream", func(t *testing.T) {
		px := registrytest.NewProxy(t, host)
		px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Times: 1, StripRange: true})
		r := parallelClient(t, 4, 8*testPart)
		got, err := readBlob(t, r.c, ref(px), p.layerD, size)
		if err != nil || !bytes.Equal(got, p.layer) {
			t.Fatalf("read: %v", err)
		}
		if n := px.Count("GET", "blob"); n != 1 {
			t.Fatalf("blob GETs %d, want 1", n)
		}
		if n := r.metric(t, "strata_registry_blob_parts_total", nil); n != 0 {
			t.Fatalf("parts metric %v, want 0", n)
		}
	})
	// firstPart lets the first part's request through the faults
	// injected after it.
	firstPart := registrytest.Fault{Method: "GET", Kind: "blob", Ranged: true, Times: 1, SetHeaders: map[string]string{"X-Test": "first part"}}
	badRange := func(contentRange string, times int) registrytest.Fault {
		return registrytest.Fault{Method: "GET", Kind: "blob", Ranged: true, Times: times, SetHeaders: map[string]string{"Content-Range": contentRange}}
	}
	for _, tc := range []struct {
		desc   string
		faults []registrytest.Fault
		want   error
	}{
		{"a corrupt part fails verification",
			[]registrytest.Fault{{Method: "GET", Kind: "blob", Ranged: true, Times: 1, Corrupt: true}}, blob.ErrMismatch},
		{"a first part with the wrong Content-Range is refused",
			[]registrytest.Fault{badRange(fmt.Sprintf("bytes 0-%d/%d", testPart-1, size+1), 1)}, registry.ErrProtocol},
		{"a later part naming other bytes fails the read",
			[]registrytest.Fault{firstPart, badRange(fmt.Sprintf("bytes 0-%d/%d", testPart-1, size), 0)}, registry.ErrProtocol},
		{"a later part of another blob size fails the read",
			[]registrytest.Fault{firstPart, badRange(fmt.Sprintf("bytes %d-%d/%d", testPart, 2*testPart-1, size+1), 0)}, registry.ErrProtocol},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			px := registrytest.NewProxy(t, host)
			for _, f := range tc.faults {
				px.Inject(f)
			}
			r := parallelClient(t, 4, 8*testPart)
			if _, err := readBlob(t, r.c, ref(px), p.layerD, size); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("Close stops the read-ahead", func(t *testing.T) {
		px := registrytest.NewProxy(t, host)
		px.Inject(firstPart)
		px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", Ranged: true, Delay: time.Hour})
		r := parallelClient(t, 4, 8*testPart)
		rc, err := r.c.Blob(context.Background(), ref(px).Repo(), p.layerD, size, nil)
		if err != nil {
			t.Fatal(err)
		}
		first := make([]byte, testPart)
		if _, err := io.ReadFull(rc, first); err != nil || !bytes.Equal(first, p.layer[:testPart]) {
			t.Fatalf("first part: %v", err)
		}
		// The read-ahead requests are held: Close cancels them and waits
		// for their goroutines (a hang here is the failure).
		if err := rc.Close(); err != nil {
			t.Fatal(err)
		}
		if n, err := rc.Read(first); n != 0 || err == nil {
			t.Fatalf("Read after Close = %d, %v; want an error", n, err)
		}
	})
}

// TestParallelConfig: bad parallel settings are refused.
func TestParallelConfig(t *testing.T) {
	for _, pc := range []registry.ParallelConfig{
		{Streams: -1},
		{Streams: 65},
		{Streams: 4, PartSize: registry.MinPartSize - 1},
		{Streams: 4, PartSize: 1 << 20, Memory: 1<<20 - 1},
	} {
		if _, err := registry.New(registry.Config{Parallel: pc}); err == nil {
			t.Errorf("New accepted Parallel %+v", pc)
		}
	}
	if _, err := registry.New(registry.Config{Parallel: registry.ParallelConfig{Streams: 4}}); err != nil {
		t.Errorf("New refused the defaults: %v", err)
	}
}

// throttled is a reverse proxy to host that sends every response body at
// most rate bytes per second (per connection, as a distant link or a
// storage backend that bounds each stream does).
func throttled(tb testing.TB, host string, rate int64) string {
	tb.Helper()
	target := &url.URL{Scheme: "http", Host: host}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.FlushInterval = -1
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rp.ServeHTTP(&throttledWriter{ResponseWriter: w, rate: rate, start: time.Now()}, r)
	}))
	tb.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

type throttledWriter struct {
	http.ResponseWriter
	rate  int64
	start time.Time
	sent  int64
}

func (w *throttledWriter) Write(p []byte) (int, error) {
	var n int
	for len(p) > 0 {
		chunk := p[:min(len(p), 32<<10)]
		m, err := w.ResponseWriter.Write(chunk)
		n += m
		w.sent += int64(m)
		if err != nil {
			return n, err
		}
		p = p[m:]
		if due := time.Duration(w.sent * int64(time.Second) / w.rate); time.Since(w.start) < due {
			time.Sleep(due - time.Since(w.start))
		}
	}
	return n, nil
}

// BenchmarkParallelBlob reads a 32 MiB blob with one stream and with four
// parts at once, on loopback and through a link of 64 MiB/s per
// connection: what Config.Parallel buys, and what it costs where one
// stream is not bound by its link.
func BenchmarkParallelBlob(b *testing.B) {
	const size = 32 << 20
	host := registrytest.InProcess(b)
	data := registrytest.RandomBytes(b, size)
	dg := blob.Digest(registrytest.PushBlob(b, host, "bench/blob", data, nil).String())
	for _, link := range []struct {
		name string
		host string
	}{{"loopback", host}, {"64MiBps-per-connection", throttled(b, host, 64<<20)}} {
		for _, streams := range []int{1, 4} {
			b.Run(fmt.Sprintf("%s/streams=%d", link.name, streams), func(b *testing.B) {
				c, err := registry.New(registry.Config{AllowCIDRs: []string{"127.0.0.0/8"}, Proxy: registry.NoProxy,
					Parallel: registry.ParallelConfig{Streams: streams}})
				if err != nil {
					b.Fatal(err)
				}
				repo, _ := registry.ParseRepository(link.host + "/bench/blob")
				benchBlob(b, c, repo, dg, size)
			})
		}
	}
}

// TestParallelBlobAuthAndRedirect: every part of a parallel read carries
// the caller's credentials (distribution with token auth: a private blob
// read in parts with them, refused without them), and parts a registry
// redirects to its storage keep their Range.
func TestParallelBlobAuthAndRedirect(t *testing.T) {
	const size = 6 * testPart
	t.Run("token auth", func(t *testing.T) {
		ts := registrytest.NewTokenServer(t, registrytest.TokenOptions{Users: map[string]string{"bob": secret}})
		d := registrytest.StartDistribution(t, registrytest.DistributionOptions{Token: ts})
		good := basicAuth("bob", secret)
		p := pushAuthed(t, d.Host, "team/private:v1", size, good)
		px := registrytest.NewProxy(t, d.Host)
		r := parallelClient(t, 4, 8*testPart)
		repo := mustRef(t, px.Host()+"/team/private:v1").Repo()
		rc, err := r.c.Blob(context.Background(), repo, p.layerD, size, good)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, p.layer) {
			t.Fatalf("read with credentials: %v", err)
		}
		if rg := px.Ranged(); !sameSet(rg, wantRanges(size)) {
			t.Fatalf("ranged requests %q, want one per part", rg)
		}
		if _, err := r.c.Blob(context.Background(), repo, p.layerD, size, nil); !errors.Is(err, registry.ErrDenied) {
			t.Fatalf("anonymous parallel read: err = %v, want ErrDenied", err)
		}
	})
	t.Run("redirected parts", func(t *testing.T) {
		host := registrytest.InProcess(t)
		p := pushImage(t, host, "app/par:v1", size)
		px := registrytest.NewProxy(t, host)
		px.Inject(registrytest.Fault{Method: "GET", Kind: "blob", RedirectTo: "http://" + host + "/v2/app/par/blobs/" + string(p.layerD)})
		r := parallelClient(t, 4, 8*testPart)
		got, err := readBlob(t, r.c, mustRef(t, px.Host()+"/app/par:v1"), p.layerD, size)
		if err != nil || !bytes.Equal(got, p.layer) {
			t.Fatalf("read: %v", err)
		}
		if rg := px.Ranged(); !sameSet(rg, wantRanges(size)) {
			t.Fatalf("ranged requests %q, want one per part", rg)
		}
		if n := r.metric(t, "strata_registry_blob_parts_total", nil); n != size/testPart {
			t.Fatalf("parts metric %v, want %d (each redirected part answered 206)", n, size/testPart)
		}
	})
}
