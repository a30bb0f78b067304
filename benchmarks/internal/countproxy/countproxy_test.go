package countproxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestCountsBlobGetsPerDigest(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.Path) }))
	defer up.Close()
	p, err := Start(strings.TrimPrefix(up.URL, "http://"), "")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	do := func(method, path string) {
		req, _ := http.NewRequest(method, "http://"+p.Host+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if method == http.MethodGet && string(b) != path {
			t.Errorf("proxied %q, upstream saw %q", path, b)
		}
	}
	do("GET", "/v2/")
	do("GET", "/v2/a/b/blobs/sha256:aa")
	do("GET", "/v2/a/b/blobs/sha256:aa")
	do("HEAD", "/v2/a/b/blobs/sha256:bb")
	do("GET", "/v2/a/b/manifests/v1")
	do("GET", "/v2/c/blobs/sha256:bb")
	got := p.BlobGets()
	if len(got) != 2 || got["sha256:aa"] != 2 || got["sha256:bb"] != 1 {
		t.Errorf("blob GETs %v, want aa:2 bb:1", got)
	}
	if p.Requests() != 6 {
		t.Errorf("%d requests, want 6", p.Requests())
	}
	p.Reset()
	if len(p.BlobGets()) != 0 || p.Requests() != 0 {
		t.Error("Reset kept counts")
	}
}

func TestRefusesNonLoopbackListen(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "localhost:0", "10.0.0.1:80", "nonsense"} {
		if p, err := Start("127.0.0.1:1", addr); err == nil {
			p.Close()
			t.Errorf("listen %q accepted", addr)
		}
	}
}
