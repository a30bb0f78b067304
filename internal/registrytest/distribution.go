package registrytest

import (
	"bytes"
	"fmt"
	"github.com/strata-oci/strata/internal/testenv"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// DistributionBinary is where Debian's docker-registry package installs
// the CNCF distribution registry.
const DistributionBinary = "/usr/bin/docker-registry"

// DistributionOptions configures StartDistribution. With neither
// BasicUsers nor Token the registry is anonymous.
type DistributionOptions struct {
	// BasicUsers enables htpasswd basic auth with these user -> password
	// pairs (bcrypt, written with htpasswd -Bbn).
	BasicUsers map[string]string
	// Token enables token auth against this token server.
	Token *TokenServer
}

// Distribution is a running docker-registry.
type Distribution struct {
	// Host is "127.0.0.1:port".
	Host string
}

// RequireDistribution fails the test under CI=true and skips it otherwise
// when the docker-registry binary is missing.
func RequireDistribution(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(DistributionBinary); err != nil {
		testenv.Missing(t, "docker-registry ("+DistributionBinary+", apt package docker-registry)", "the integration against the real registry")
	}
}

// StartDistribution starts docker-registry on a free loopback port with a
// temp config and storage, waits until /v2/ answers, and kills it in
// t.Cleanup. It skips (or fails under CI=true) when the binary is missing.
func StartDistribution(t testing.TB, opts DistributionOptions) *Distribution {
	t.Helper()
	RequireDistribution(t)
	dir := t.TempDir()
	auth := ""
	switch {
	case opts.Token != nil:
		auth = fmt.Sprintf("auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n",
			opts.Token.Realm(), opts.Token.Service(), opts.Token.Issuer(), opts.Token.CertFile())
	case len(opts.BasicUsers) > 0:
		htp, err := exec.LookPath("htpasswd")
		if err != nil {
			testenv.Missing(t, "htpasswd (apt package apache2-utils)", "basic auth against the real registry")
		}
		var file bytes.Buffer
		for u, p := range opts.BasicUsers {
			out, err := exec.Command(htp, "-Bbn", u, p).Output()
			if err != nil {
				t.Fatalf("registrytest: htpasswd: %v", err)
			}
			file.Write(bytes.TrimSpace(out))
			file.WriteByte('\n')
		}
		path := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(path, file.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		auth = fmt.Sprintf("auth:\n  htpasswd:\n    realm: basic-realm\n    path: %s\n", path)
	}
	for attempt := 0; ; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		cfg := fmt.Sprintf(`version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}
http: {addr: %s, secret: test-only}
%s`, filepath.Join(dir, "data"), addr, auth)
		cfgPath := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		var out syncBuffer
		cmd := exec.Command(DistributionBinary, "serve", cfgPath)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatalf("registrytest: starting docker-registry: %v", err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		up := false
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
			resp, err := http.Get("http://" + addr + "/v2/")
			if err == nil {
				resp.Body.Close()
				up = true
				break
			}
			select {
			case <-done:
				deadline = time.Time{}
			case <-time.After(20 * time.Millisecond):
			}
		}
		if up {
			t.Cleanup(func() {
				cmd.Process.Kill()
				<-done
			})
			return &Distribution{Host: addr}
		}
		cmd.Process.Kill()
		<-done
		if attempt == 2 {
			t.Fatalf("registrytest: docker-registry did not come up on %s:\n%s", addr, out.String())
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
