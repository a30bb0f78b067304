package registrytest

import (
	"io"
	"net/http"
	"testing"
)

func TestKind(t *testing.T) {
	tests := []struct{ desc, path, want string }{
		{"ping", "/v2/", "ping"},
		{"manifest", "/v2/a/b/manifests/v1", "manifest"},
		{"blob", "/v2/a/blobs/sha256:00", "blob"},
		{"upload", "/v2/a/blobs/uploads/123", "upload"},
		{"catalog", "/v2/_catalog", "other"},
	}
	for _, tt := range tests {
		if got := Kind(tt.path); got != tt.want {
			t.Errorf("%s: Kind(%q) = %q, want %q", tt.desc, tt.path, got, tt.want)
		}
	}
}

func TestProxyFaultsAreUsedUp(t *testing.T) {
	host := InProcess(t)
	p := NewProxy(t, host)
	p.Inject(Fault{Kind: "ping", Times: 2, Status: http.StatusTeapot, RetryAfter: "1"})
	var codes []int
	for i := 0; i < 3; i++ {
		resp, err := http.Get("http://" + p.Host() + "/v2/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
		if i < 2 && resp.Header.Get("Retry-After") != "1" {
			t.Fatalf("Retry-After missing")
		}
	}
	if codes[0] != http.StatusTeapot || codes[1] != http.StatusTeapot || codes[2] != http.StatusOK {
		t.Fatalf("codes %v, want 418 418 200", codes)
	}
	if p.Count("GET", "ping") != 3 {
		t.Fatalf("count %d", p.Count("GET", "ping"))
	}
}

func TestStartDistributionAnswers(t *testing.T) {
	d := StartDistribution(t, DistributionOptions{BasicUsers: map[string]string{"u": "p"}})
	resp, err := http.Get("http://" + d.Host + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous /v2/ = %d, want 401", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", "http://"+d.Host+"/v2/", nil)
	req.SetBasicAuth("u", "p")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("authenticated /v2/ = %d, want 200", resp.StatusCode)
	}
}
