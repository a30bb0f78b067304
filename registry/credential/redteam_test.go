package credential_test

import (
	"context"
	"testing"

	"github.com/strata-oci/strata/registry/credential"
)

// Red-team regression tests: a credential configured for, or sent with a
// request for, one registry is never handed to another host, however the
// host is spelled; and identities of different principals never collide.

func TestRedteamCredentialsStayWithTheirHost(t *testing.T) {
	ctx := context.Background()
	r, err := credential.New(credential.Config{Registries: map[string]credential.Credential{
		"registry.local:5000": credential.Basic("", "exact", "p1"),
		"*.example.com":       credential.Basic("", "pattern", "p2"),
		"docker.io":           credential.Basic("", "hub", "p3"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		desc, host, want string // want: the username handed out, "" for anonymous
	}{
		{"exact host, other port", "registry.local:5001", ""},
		{"exact host, no port", "registry.local", ""},
		{"exact host, upper case", "REGISTRY.LOCAL:5000", "exact"},
		{"suffix of the exact host", "evilregistry.local:5000", ""},
		{"exact host as a subdomain", "registry.local.evil.net:5000", ""},
		{"pattern: the domain itself", "example.com", ""},
		{"pattern: a lookalike suffix", "evilexample.com", ""},
		{"pattern: domain inside another", "a.example.com.evil.net", ""},
		{"pattern: with a port", "a.example.com:443", ""},
		{"pattern: a subdomain", "a.example.com", "pattern"},
		{"pattern: deeper subdomain", "x.y.example.com", "pattern"},
		{"hub alias", "index.docker.io", "hub"},
		{"hub alias, registry-1", "registry-1.docker.io", "hub"},
		{"hub lookalike", "docker.io.evil.net", ""},
		{"hub with a port", "docker.io:443", ""},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			c, err := r.Resolve(ctx, tc.host)
			if err != nil {
				t.Fatalf("Resolve(%q): %v", tc.host, err)
			}
			if c.Username != tc.want {
				t.Errorf("Resolve(%q) handed out %q's credential, want %q", tc.host, c.Username, tc.want)
			}
		})
	}

	// A request credential named for one registry is not used at another.
	req := credential.Basic("ghcr.io", "alice", "secret")
	for _, host := range []string{"ghcr.io.evil.net", "evil.net", "ghcr.io:8443", "xghcr.io"} {
		c, err := r.Resolve(ctx, host, req)
		if err != nil {
			t.Fatalf("Resolve(%q): %v", host, err)
		}
		if c.Username == "alice" {
			t.Errorf("Resolve(%q) handed out the request credential meant for ghcr.io", host)
		}
	}
	if c, err := r.Resolve(ctx, "GHCR.io", req); err != nil || c.Username != "alice" {
		t.Errorf("Resolve(GHCR.io) = %q, %v; want the request credential", c.Username, err)
	}
}

func TestRedteamIdentitiesDoNotCollide(t *testing.T) {
	key := credential.NewSecretKey([]byte("0123456789abcdef0123456789abcdef"))
	creds := []struct {
		desc string
		c    credential.Credential
	}{
		{"a / bc", credential.Basic("r.example", "a", "bc")},
		{"ab / c", credential.Basic("r.example", "ab", "c")},
		{"name with NUL", credential.Basic("r.example", "a\x00", "bc")},
		{"password as identity token", credential.IdentityToken("r.example", "a", "bc")},
		{"password as registry token", credential.RegistryToken("r.example", "bc")},
		{"other registry", credential.Basic("r.example:5000", "a", "bc")},
		{"username only", credential.Basic("r.example", "a", "")},
		{"password only", credential.Basic("r.example", "", "abc")},
		{"registry in the username", credential.Basic("", "r.examplea", "bc")},
	}
	seen := map[string]string{}
	for _, tc := range creds {
		id := tc.c.Identity(key)
		if id == credential.AnonymousIdentity {
			t.Errorf("%s: identity is the anonymous one", tc.desc)
		}
		if prev, ok := seen[id]; ok {
			t.Errorf("%s and %s share an identity", prev, tc.desc)
		}
		seen[id] = tc.desc
	}
	// Docker Hub aliases and case are one registry.
	a := credential.Basic("docker.io", "u", "p").Identity(key)
	for _, h := range []string{"index.docker.io", "registry-1.docker.io", "Docker.IO"} {
		if got := credential.Basic(h, "u", "p").Identity(key); got != a {
			t.Errorf("identity at %s differs from docker.io", h)
		}
	}
}
