package credential

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/strata-oci/strata/internal/trunc"
)

// DefaultCacheTTL is how long keychain lookups are cached by default.
const DefaultCacheTTL = 15 * time.Minute

// Config configures a Resolver. The zero value resolves request credentials
// and otherwise anonymous.
type Config struct {
	// Registries maps a registry host ("ghcr.io", "registry.local:5000",
	// "docker.io") or a pattern "*.example.com[:port]" to the credential
	// used there. Keys are normalized (Docker Hub aliases are one host, and
	// configuring two of them is an error). The credential's own Registry
	// field is ignored. A pattern matches any host under the domain, at any
	// depth, but not the domain itself, and only with the same port (none
	// when the pattern has none).
	Registries map[string]Credential

	// EnableKeychain turns on the Docker/Podman keychain
	// (authn.DefaultKeychain: ~/.docker/config.json, credential helpers,
	// containers/auth.json). Off by default: on a shared executor the
	// machine's own logins must not serve arbitrary callers.
	EnableKeychain bool
	// Keychain replaces authn.DefaultKeychain (tests; other keychains).
	Keychain authn.Keychain `json:"-"`
	// CacheTTL is how long a keychain answer (including "nothing here") is
	// reused. 0 means DefaultCacheTTL; negative disables the cache.
	CacheTTL time.Duration
	// Now is the clock for the cache; nil means time.Now.
	Now func() time.Time `json:"-"`

	// IdentityKey keys Credential.Identity; see there. Empty uses a fixed
	// public key.
	IdentityKey SecretKey
}

// Resolver chooses the credential for a registry. It is safe for concurrent
// use.
type Resolver struct {
	exact    map[string]Credential
	patterns []pattern // most specific first
	keychain authn.Keychain
	ttl      time.Duration
	now      func() time.Time
	key      SecretKey

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	cred    Credential
	expires time.Time
}

// New validates cfg and returns a Resolver. Errors wrap ErrInvalidConfig or
// ErrInvalidRegistry and name the offending host or pattern, never a
// secret.
func New(cfg Config) (*Resolver, error) {
	r := &Resolver{
		exact: map[string]Credential{}, ttl: cfg.CacheTTL, now: cfg.Now,
		cache: map[string]cached{},
	}
	r.key = NewSecretKey(cfg.IdentityKey.bytes())
	if r.ttl == 0 {
		r.ttl = DefaultCacheTTL
	}
	if r.now == nil {
		r.now = time.Now
	}
	if cfg.EnableKeychain {
		r.keychain = cfg.Keychain
		if r.keychain == nil {
			r.keychain = authn.DefaultKeychain
		}
	}
	keys := make([]string, 0, len(cfg.Registries))
	for k := range cfg.Registries {
		keys = append(keys, k)
	}
	slices.Sort(keys) // deterministic errors
	seen := map[string]string{}
	for _, k := range keys {
		c := cfg.Registries[k]
		if c.IsAnonymous() {
			return nil, fmt.Errorf("%w: registry %q: credential has no username and no secret", ErrInvalidConfig, trunc.String(redactUserinfo(k), 100))
		}
		c.Source = SourceConfig
		if strings.HasPrefix(k, "*") {
			p, err := parsePattern(k)
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
			}
			canon := "*" + p.suffix + ":" + p.port
			if prev, dup := seen[canon]; dup {
				return nil, fmt.Errorf("%w: patterns %q and %q are the same", ErrInvalidConfig, prev, k)
			}
			seen[canon] = k
			p.cred = c
			r.patterns = append(r.patterns, p)
			continue
		}
		host, err := NormalizeRegistry(k)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		if prev, dup := seen[host]; dup {
			return nil, fmt.Errorf("%w: registries %q and %q are the same registry (%s)", ErrInvalidConfig, prev, k, host)
		}
		seen[host] = k
		r.exact[host] = c
	}
	// Most specific first: more labels in the suffix; a port before none.
	slices.SortStableFunc(r.patterns, func(a, b pattern) int {
		if d := strings.Count(b.suffix, ".") - strings.Count(a.suffix, "."); d != 0 {
			return d
		}
		if d := len(b.suffix) - len(a.suffix); d != 0 {
			return d
		}
		return strings.Compare(b.port, a.port)
	})
	return r, nil
}

// Resolve returns the credential to use at registry, with Registry set to
// the normalized host and Source saying where it came from:
//
//  1. the first non-anonymous request credential whose Registry is empty
//     (meaning: this request's registry) or names this registry;
//  2. the configured credential for the exact host, else for the most
//     specific matching "*.domain" pattern;
//  3. the keychain, if enabled (answers cached for the TTL);
//  4. Anonymous.
//
// Errors wrap ErrInvalidRegistry (a malformed registry, or a request
// credential naming one) or ErrKeychain; they never contain a secret.
func (r *Resolver) Resolve(ctx context.Context, registry string, request ...Credential) (Credential, error) {
	host, err := NormalizeRegistry(registry)
	if err != nil {
		return Credential{}, err
	}
	for i, c := range request {
		if c.IsAnonymous() {
			continue
		}
		if c.Registry != "" {
			h, err := NormalizeRegistry(c.Registry)
			if err != nil {
				return Credential{}, fmt.Errorf("request credential %d: %w", i, err)
			}
			if h != host {
				continue
			}
		}
		return c.with(host, SourceRequest), nil
	}
	if c, ok := r.exact[host]; ok {
		return c.with(host, SourceConfig), nil
	}
	for _, p := range r.patterns {
		if p.matches(host) {
			return p.cred.with(host, SourceConfig), nil
		}
	}
	if r.keychain != nil {
		c, err := r.fromKeychain(ctx, host)
		if err != nil {
			return Credential{}, err
		}
		if !c.IsAnonymous() {
			return c, nil
		}
	}
	return Anonymous.with(host, SourceAnonymous), nil
}

// Identity returns c.Identity keyed by the configured IdentityKey.
func (r *Resolver) Identity(c Credential) string { return c.Identity(r.key) }

func (r *Resolver) fromKeychain(ctx context.Context, host string) (Credential, error) {
	now := r.now()
	if r.ttl > 0 {
		r.mu.Lock()
		e, ok := r.cache[host]
		if ok && now.Before(e.expires) {
			r.mu.Unlock()
			return e.cred, nil
		}
		delete(r.cache, host)
		r.mu.Unlock()
	}
	if err := ctx.Err(); err != nil {
		return Credential{}, fmt.Errorf("%w for %s: %w", ErrKeychain, host, err)
	}
	auth, err := authn.Resolve(ctx, r.keychain, resource(host))
	if err != nil {
		return Credential{}, fmt.Errorf("%w for %s: %v", ErrKeychain, host, err)
	}
	ac, err := authn.Authorization(ctx, auth)
	if err != nil {
		return Credential{}, fmt.Errorf("%w for %s: %v", ErrKeychain, host, err)
	}
	c, err := FromAuthConfig(host, *ac)
	if err != nil {
		return Credential{}, fmt.Errorf("%w: %v", ErrKeychain, err)
	}
	c.Source = SourceKeychain
	if r.ttl > 0 {
		r.mu.Lock()
		r.cache[host] = cached{cred: c, expires: now.Add(r.ttl)}
		r.mu.Unlock()
	}
	return c, nil
}

// resource names a registry to a keychain.
type resource string

func (r resource) String() string      { return string(r) }
func (r resource) RegistryStr() string { return string(r) }
