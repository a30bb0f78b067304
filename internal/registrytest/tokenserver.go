package registrytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TokenOptions configures a TokenServer.
type TokenOptions struct {
	// Service and Issuer go into the tokens and the registry config
	// (defaults "strata-test" and "strata-test-issuer").
	Service, Issuer string
	// Users maps user names to passwords. A user with the right password
	// gets pull and push on every repository it asks for; a wrong password
	// gets 401; no credentials get pull on Public repositories only.
	Users map[string]string
	// Public reports whether anonymous callers may pull repo.
	Public func(repo string) bool
	// Lifetime returns the lifetime of the n-th token issued (n from 1);
	// nil means 5 minutes. A token may be issued already expired (negative
	// lifetime).
	Lifetime func(n int) time.Duration
}

// TokenServer issues ES256 JWTs for the distribution registry's token auth,
// signed by a key whose self-signed certificate (in CertFile) the registry
// trusts via rootcertbundle; each token carries that certificate in its x5c
// header. Its realm uses "localhost", not 127.0.0.1: ggcr refuses token
// realms on private IP literals. It is safe for concurrent use.
type TokenServer struct {
	opts     TokenOptions
	key      *ecdsa.PrivateKey
	certDER  []byte
	certFile string
	realm    string

	mu     sync.Mutex
	issued int
	denied int
}

// NewTokenServer starts a token server on a loopback port, writes its
// certificate to a temp dir, and stops it in t.Cleanup.
func NewTokenServer(t testing.TB, opts TokenOptions) *TokenServer {
	t.Helper()
	if opts.Service == "" {
		opts.Service = "strata-test"
	}
	if opts.Issuer == "" {
		opts.Issuer = "strata-test-issuer"
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("registrytest: token key: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "strata test token signer"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("registrytest: token cert: %v", err)
	}
	ts := &TokenServer{opts: opts, key: key, certDER: der}
	ts.certFile = filepath.Join(t.TempDir(), "token-cert.pem")
	if err := os.WriteFile(ts.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatalf("registrytest: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("registrytest: token server: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(ts.serve), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	ts.realm = fmt.Sprintf("http://localhost:%d/token", ln.Addr().(*net.TCPAddr).Port)
	return ts
}

// Realm returns the token endpoint URL (on localhost).
func (ts *TokenServer) Realm() string { return ts.realm }

// CertFile returns the path of the PEM certificate for rootcertbundle.
func (ts *TokenServer) CertFile() string { return ts.certFile }

// Service and Issuer return the values the registry must be configured with.
func (ts *TokenServer) Service() string { return ts.opts.Service }
func (ts *TokenServer) Issuer() string  { return ts.opts.Issuer }

// Issued returns how many tokens were issued; Denied how many requests got 401.
func (ts *TokenServer) Issued() int { ts.mu.Lock(); defer ts.mu.Unlock(); return ts.issued }
func (ts *TokenServer) Denied() int { ts.mu.Lock(); defer ts.mu.Unlock(); return ts.denied }

type access struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

func (ts *TokenServer) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/token" {
		http.NotFound(w, r)
		return
	}
	user, pass, hasAuth := r.BasicAuth()
	if hasAuth {
		if want, ok := ts.opts.Users[user]; !ok || want != pass {
			ts.mu.Lock()
			ts.denied++
			ts.mu.Unlock()
			w.Header().Set("WWW-Authenticate", `Basic realm="strata-test"`)
			http.Error(w, `{"details":"bad credentials"}`, http.StatusUnauthorized)
			return
		}
	}
	var grants []access
	for _, scope := range r.URL.Query()["scope"] {
		for _, s := range strings.Split(scope, " ") {
			parts := strings.Split(s, ":")
			if len(parts) < 3 || parts[0] != "repository" {
				continue
			}
			repo := strings.Join(parts[1:len(parts)-1], ":")
			var actions []string
			switch {
			case hasAuth:
				actions = strings.Split(parts[len(parts)-1], ",")
			case ts.opts.Public != nil && ts.opts.Public(repo):
				actions = []string{"pull"}
			}
			grants = append(grants, access{Type: "repository", Name: repo, Actions: actions})
		}
	}
	ts.mu.Lock()
	ts.issued++
	n := ts.issued
	ts.mu.Unlock()
	life := 5 * time.Minute
	if ts.opts.Lifetime != nil {
		life = ts.opts.Lifetime(n)
	}
	now := time.Now()
	tok, err := ts.sign(map[string]any{
		"iss":    ts.opts.Issuer,
		"sub":    user,
		"aud":    ts.opts.Service,
		"iat":    now.Add(-time.Minute).Unix(),
		"nbf":    now.Add(-time.Minute).Unix(),
		"exp":    now.Add(life).Unix(),
		"jti":    fmt.Sprintf("strata-%d-%d", now.UnixNano(), n),
		"access": grants,
	})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"token": tok, "access_token": tok,
		"expires_in": int(life / time.Second), "issued_at": now.UTC().Format(time.RFC3339),
	})
}

func (ts *TokenServer) sign(claims map[string]any) (string, error) {
	hdr, err := json.Marshal(map[string]any{
		"typ": "JWT", "alg": "ES256",
		"x5c": []string{base64.StdEncoding.EncodeToString(ts.certDER)},
	})
	if err != nil {
		return "", err
	}
	body, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString(hdr) + "." + enc.EncodeToString(body)
	sum := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, ts.key, sum[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + enc.EncodeToString(sig), nil
}
