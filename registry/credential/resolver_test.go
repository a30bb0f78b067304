package credential_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/strata-oci/strata/registry/credential"
)

// fakeKeychain is an in-memory Docker keychain that counts lookups.
type fakeKeychain struct {
	mu    sync.Mutex
	auth  map[string]authn.AuthConfig // by RegistryStr
	err   error
	calls map[string]int
}

func (k *fakeKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.calls == nil {
		k.calls = map[string]int{}
	}
	k.calls[r.RegistryStr()]++
	if k.err != nil {
		return nil, k.err
	}
	ac, ok := k.auth[r.RegistryStr()]
	if !ok {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(ac), nil
}

func (k *fakeKeychain) count(reg string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.calls[reg]
}

func user(t *testing.T, c credential.Credential) string {
	t.Helper()
	ac, err := c.Authenticator().Authorization()
	if err != nil {
		t.Fatal(err)
	}
	return ac.Username + "/" + ac.Password + ac.RegistryToken + ac.IdentityToken
}

func TestResolvePrecedence(t *testing.T) {
	kc := &fakeKeychain{auth: map[string]authn.AuthConfig{
		"keychain.example":       {Username: "kc", Password: "kcpw"},
		credential.DockerHub:     {Username: "hubkc", Password: "hubkcpw"},
		"ghcr.io":                {Username: "kcghcr", Password: "x"},
		"anon.internal.corp:443": {},
	}}
	cfg := credential.Config{
		Registries: map[string]credential.Credential{
			"ghcr.io":                           credential.Basic("", "cfg-ghcr", "p1"),
			"docker.io":                         credential.Basic("ignored.example", "cfg-hub", "p2"),
			"*.corp":                            credential.Basic("", "cfg-corp", "p3"),
			"*.internal.corp":                   credential.Basic("", "cfg-internal", "p4"),
			"registry.internal.corp":            credential.Basic("", "cfg-exact", "p5"),
			"*.internal.corp:5000":              credential.Basic("", "cfg-port", "p6"),
			"Registry.Local:5000":               credential.RegistryToken("", "tok"),
			"*.dkr.ecr.us-east-1.amazonaws.com": credential.Basic("", "AWS", "ecr"),
		},
		EnableKeychain: true, Keychain: kc,
	}
	r, err := credential.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	reqAny := credential.Basic("", "req", "rp")
	reqGHCR := credential.Basic("ghcr.io", "req-ghcr", "rp2")
	reqHub := credential.Basic("registry-1.docker.io", "req-hub", "rp3")
	tests := []struct {
		desc     string
		registry string
		request  []credential.Credential
		want     string // user/secret
		source   credential.Source
		host     string // normalized registry on the result
	}{
		{"request credential without registry wins", "ghcr.io", []credential.Credential{reqAny}, "req/rp", credential.SourceRequest, "ghcr.io"},
		{"request credential for this registry", "ghcr.io", []credential.Credential{reqHub, reqGHCR}, "req-ghcr/rp2", credential.SourceRequest, "ghcr.io"},
		{"request credential for another registry is not sent", "quay.io", []credential.Credential{reqGHCR}, "/", credential.SourceAnonymous, "quay.io"},
		{"request credential via Docker Hub alias", "docker.io", []credential.Credential{reqGHCR, reqHub}, "req-hub/rp3", credential.SourceRequest, credential.DockerHub},
		{"anonymous request credential falls through", "ghcr.io", []credential.Credential{credential.Anonymous}, "cfg-ghcr/p1", credential.SourceConfig, "ghcr.io"},
		{"configured exact beats keychain", "ghcr.io", nil, "cfg-ghcr/p1", credential.SourceConfig, "ghcr.io"},
		{"configured docker.io serves index.docker.io", "index.docker.io", nil, "cfg-hub/p2", credential.SourceConfig, credential.DockerHub},
		{"configured docker.io serves registry-1.docker.io", "registry-1.docker.io", nil, "cfg-hub/p2", credential.SourceConfig, credential.DockerHub},
		{"exact beats pattern", "registry.internal.corp", nil, "cfg-exact/p5", credential.SourceConfig, "registry.internal.corp"},
		{"longer pattern beats shorter", "other.internal.corp", nil, "cfg-internal/p4", credential.SourceConfig, "other.internal.corp"},
		{"pattern matches deeper hosts", "a.b.internal.corp", nil, "cfg-internal/p4", credential.SourceConfig, "a.b.internal.corp"},
		{"shorter pattern for other subdomains", "build.corp", nil, "cfg-corp/p3", credential.SourceConfig, "build.corp"},
		{"pattern does not match the bare domain", "corp", nil, "/", credential.SourceAnonymous, "corp"},
		{"pattern with port needs that port", "x.internal.corp:5000", nil, "cfg-port/p6", credential.SourceConfig, "x.internal.corp:5000"},
		{"pattern without port does not match a port", "anon.internal.corp:443", nil, "/", credential.SourceAnonymous, "anon.internal.corp:443"},
		{"suffix must be on a label boundary", "evilcorp", nil, "/", credential.SourceAnonymous, "evilcorp"},
		{"exact host with port, case-insensitive", "registry.local:5000", nil, "/tok", credential.SourceConfig, "registry.local:5000"},
		{"exact host needs the same port", "registry.local", nil, "/", credential.SourceAnonymous, "registry.local"},
		{"ECR-style pattern", "123456789012.dkr.ecr.us-east-1.amazonaws.com", nil, "AWS/ecr", credential.SourceConfig, "123456789012.dkr.ecr.us-east-1.amazonaws.com"},
		{"keychain when nothing configured", "keychain.example", nil, "kc/kcpw", credential.SourceKeychain, "keychain.example"},
		{"anonymous when keychain has nothing", "quay.io", nil, "/", credential.SourceAnonymous, "quay.io"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c, err := r.Resolve(context.Background(), tt.registry, tt.request...)
			if err != nil {
				t.Fatal(err)
			}
			if got := user(t, c); got != tt.want || c.Source != tt.source || c.Registry != tt.host {
				t.Fatalf("Resolve(%s) = %s from %v for %q; want %s from %v for %q", tt.registry, got, c.Source, c.Registry, tt.want, tt.source, tt.host)
			}
			if tt.source == credential.SourceAnonymous && (!c.IsAnonymous() || c.Authenticator() != authn.Anonymous) {
				t.Errorf("anonymous result %v is not anonymous", c)
			}
		})
	}
}

func TestKeychainOffByDefault(t *testing.T) {
	kc := &fakeKeychain{auth: map[string]authn.AuthConfig{"ghcr.io": {Username: "u", Password: "p"}}}
	r, err := credential.New(credential.Config{Keychain: kc}) // EnableKeychain false
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.Resolve(context.Background(), "ghcr.io")
	if err != nil || !c.IsAnonymous() || kc.count("ghcr.io") != 0 {
		t.Fatalf("Resolve = %v, %v; keychain asked %d times", c, err, kc.count("ghcr.io"))
	}
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestKeychainCache(t *testing.T) {
	tests := []struct {
		desc string
		ttl  time.Duration
		// steps: advance the clock by d, then resolve; want the keychain's
		// cumulative call count after each step.
		steps []time.Duration
		calls []int
	}{
		{"default TTL is 15 minutes", 0, []time.Duration{0, time.Minute, 13 * time.Minute, 59 * time.Second, time.Second, time.Minute}, []int{1, 1, 1, 1, 2, 2}},
		{"custom TTL", time.Minute, []time.Duration{0, 30 * time.Second, 30 * time.Second, time.Second}, []int{1, 1, 2, 2}},
		{"negative TTL disables the cache", -1, []time.Duration{0, 0, 0}, []int{1, 2, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			for _, reg := range []string{"ghcr.io", "nothing.example"} { // a hit and a negative answer
				clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
				kc := &fakeKeychain{auth: map[string]authn.AuthConfig{"ghcr.io": {Username: "u", Password: "p"}}}
				r, err := credential.New(credential.Config{EnableKeychain: true, Keychain: kc, CacheTTL: tt.ttl, Now: clock.now})
				if err != nil {
					t.Fatal(err)
				}
				for i, d := range tt.steps {
					clock.advance(d)
					c, err := r.Resolve(context.Background(), reg)
					if err != nil {
						t.Fatal(err)
					}
					if (reg == "ghcr.io") != (c.Source == credential.SourceKeychain) {
						t.Fatalf("%s step %d: source %v", reg, i, c.Source)
					}
					if got := kc.count(reg); got != tt.calls[i] {
						t.Fatalf("%s step %d: keychain asked %d times, want %d", reg, i, got, tt.calls[i])
					}
				}
			}
		})
	}
}

func TestKeychainCacheDockerHubAliases(t *testing.T) {
	kc := &fakeKeychain{auth: map[string]authn.AuthConfig{credential.DockerHub: {Username: "u", Password: "p"}}}
	r, err := credential.New(credential.Config{EnableKeychain: true, Keychain: kc})
	if err != nil {
		t.Fatal(err)
	}
	for _, reg := range []string{"docker.io", "index.docker.io", "registry-1.docker.io", "DOCKER.IO"} {
		c, err := r.Resolve(context.Background(), reg)
		if err != nil || c.Source != credential.SourceKeychain {
			t.Fatalf("Resolve(%s) = %v, %v", reg, c, err)
		}
	}
	if n := kc.count(credential.DockerHub); n != 1 {
		t.Fatalf("keychain asked %d times for Docker Hub under its aliases, want 1", n)
	}
}

func TestResolveErrorsNeverContainSecrets(t *testing.T) {
	cfg := credential.Config{
		Registries: map[string]credential.Credential{
			"ghcr.io": credential.Basic("", "alice", secretPassword),
			"*.corp":  credential.RegistryToken("", secretToken),
		},
		EnableKeychain: true,
		Keychain:       &fakeKeychain{err: errors.New("helper docker-credential-pass failed: exit 1")},
		IdentityKey:    credential.NewSecretKey([]byte(secretIdentity)),
	}
	r, err := credential.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	req := credential.Basic("", "bob", secretPassword)
	tests := []struct {
		desc     string
		registry string
		request  []credential.Credential
		want     error
	}{
		{"malformed registry", "https://ghcr.io/v2/", []credential.Credential{req}, credential.ErrInvalidRegistry},
		{"registry with user info", "bob:" + secretPassword + "@ghcr.io", nil, credential.ErrInvalidRegistry},
		{"URL with user info", "https://bob:" + secretPassword + "@ghcr.io/v2/", nil, credential.ErrInvalidRegistry},
		{"request credential names a malformed registry", "ghcr.io", []credential.Credential{credential.Basic("not a host", "bob", secretPassword)}, credential.ErrInvalidRegistry},
		{"keychain failure", "quay.io", nil, credential.ErrKeychain},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			_, err := r.Resolve(context.Background(), tt.registry, tt.request...)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Resolve = %v, want %v", err, tt.want)
			}
			assertNoSecret(t, "error", err.Error())
			assertNoSecret(t, "error %+v", fmt.Sprintf("%+v", err))
		})
	}
	// A resolver holding secrets prints none.
	if _, err := r.Resolve(context.Background(), "ghcr.io"); err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
		assertNoSecret(t, "resolver "+verb, fmt.Sprintf(verb, r))
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	good := credential.Basic("", "u", secretPassword)
	tests := []struct {
		desc string
		regs map[string]credential.Credential
		want error
		msg  string
	}{
		{"aliases configured twice", map[string]credential.Credential{"docker.io": good, "index.docker.io": good}, credential.ErrInvalidConfig, "same registry"},
		{"pattern configured twice", map[string]credential.Credential{"*.corp": good, "*.CORP": good}, credential.ErrInvalidConfig, "same"},
		{"wildcard in the middle", map[string]credential.Credential{"a.*.corp": good}, credential.ErrInvalidRegistry, "a.*.corp"},
		{"bare star", map[string]credential.Credential{"*": good}, credential.ErrInvalidRegistry, "*.domain"},
		{"scheme", map[string]credential.Credential{"https://ghcr.io": good}, credential.ErrInvalidRegistry, "https://ghcr.io"},
		{"path", map[string]credential.Credential{"ghcr.io/org": good}, credential.ErrInvalidRegistry, "ghcr.io/org"},
		{"user info in a key", map[string]credential.Credential{"u:" + secretPassword + "@ghcr.io": good}, credential.ErrInvalidRegistry, "<redacted>@ghcr.io"},
		{"anonymous entry", map[string]credential.Credential{"ghcr.io": credential.Anonymous}, credential.ErrInvalidConfig, "no username and no secret"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			_, err := credential.New(credential.Config{Registries: tt.regs})
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("New = %v, want %v mentioning %q", err, tt.want, tt.msg)
			}
			assertNoSecret(t, "error", err.Error())
		})
	}
}

func TestNormalizeRegistry(t *testing.T) {
	tests := []struct {
		desc, in, want string // want "" means error
	}{
		{"plain", "ghcr.io", "ghcr.io"},
		{"upper case", "GHCR.IO", "ghcr.io"},
		{"docker.io alias", "docker.io", credential.DockerHub},
		{"registry-1 alias", "registry-1.docker.io", credential.DockerHub},
		{"port", "localhost:5000", "localhost:5000"},
		{"ipv4", "127.0.0.1:5000", "127.0.0.1:5000"},
		{"ipv6", "[::1]:5000", "[::1]:5000"},
		{"empty", "", ""},
		{"scheme", "http://ghcr.io", ""},
		{"path", "ghcr.io/library", ""},
		{"user info", "u@ghcr.io", ""},
		{"space", "ghcr .io", ""},
		{"trailing dot label", "ghcr.", ""},
		{"port too long", "ghcr.io:123456", ""},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			got, err := credential.NormalizeRegistry(tt.in)
			if tt.want == "" {
				if !errors.Is(err, credential.ErrInvalidRegistry) {
					t.Fatalf("NormalizeRegistry(%q) = %q, %v; want ErrInvalidRegistry", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("NormalizeRegistry(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestResolveConcurrent(t *testing.T) {
	kc := &fakeKeychain{auth: map[string]authn.AuthConfig{"ghcr.io": {Username: "u", Password: "p"}}}
	r, err := credential.New(credential.Config{EnableKeychain: true, Keychain: kc})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			reg := []string{"ghcr.io", "quay.io"}[i%2]
			c, err := r.Resolve(context.Background(), reg)
			if err == nil && (reg == "ghcr.io") == c.IsAnonymous() {
				err = fmt.Errorf("%s resolved to %v", reg, c)
			}
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Concurrent misses may each ask the keychain; later calls are cached.
	before := kc.count("ghcr.io")
	if _, err := r.Resolve(context.Background(), "ghcr.io"); err != nil || kc.count("ghcr.io") != before {
		t.Fatalf("cached lookup asked the keychain again (%d -> %d), err %v", before, kc.count("ghcr.io"), err)
	}
}

func TestResolveHonoursCancelledContext(t *testing.T) {
	kc := &fakeKeychain{}
	r, err := credential.New(credential.Config{EnableKeychain: true, Keychain: kc})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Resolve(ctx, "ghcr.io"); !errors.Is(err, context.Canceled) || kc.count("ghcr.io") != 0 {
		t.Fatalf("Resolve(cancelled) = %v, keychain asked %d times", err, kc.count("ghcr.io"))
	}
}

// FuzzNormalizeRegistry: never panics; accepted hosts are idempotent and
// hold nothing but a host and a port.
func FuzzNormalizeRegistry(f *testing.F) {
	for _, s := range []string{"ghcr.io", "docker.io", "[::1]:5000", "a@b", "http://x", "x:99999", "*.corp"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := credential.NormalizeRegistry(s)
		if err != nil {
			if !errors.Is(err, credential.ErrInvalidRegistry) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		if strings.ContainsAny(h, "/@ *?#\\") || h != strings.ToLower(h) {
			t.Fatalf("NormalizeRegistry(%q) = %q", s, h)
		}
		if again, err := credential.NormalizeRegistry(h); err != nil || again != h {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", s, h, again, err)
		}
	})
}
