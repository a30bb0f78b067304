package credential_test

import (
	"context"
	"encoding/json"
	"regexp"
	"testing"

	"github.com/strata-oci/strata/registry/credential"
)

var hexID = regexp.MustCompile(`^[0-9a-f]{64}$`)

func TestIdentityStableAndDistinct(t *testing.T) {
	key := credential.NewSecretKey([]byte("fleet-key-0123456789abcdef0123456"))
	base := credential.Basic("ghcr.io", "alice", "pw")
	tests := []struct {
		desc string
		a, b credential.Credential
		keyA credential.SecretKey
		keyB credential.SecretKey
		same bool
	}{
		{"same credential, separately built", base, credential.Basic("ghcr.io", "alice", "pw"), key, key, true},
		{"source does not matter", base, withSource(t, base), key, key, true},
		{"registry case and Docker Hub aliases are one registry", credential.Basic("docker.io", "a", "p"), credential.Basic("Registry-1.Docker.IO", "a", "p"), key, key, true},
		{"other password", base, credential.Basic("ghcr.io", "alice", "pw2"), key, key, false},
		{"other user", base, credential.Basic("ghcr.io", "bob", "pw"), key, key, false},
		{"other registry", base, credential.Basic("quay.io", "alice", "pw"), key, key, false},
		{"other port", credential.Basic("r.local:5000", "a", "p"), credential.Basic("r.local:5001", "a", "p"), key, key, false},
		{"no ambiguity across the user/password boundary", credential.Basic("ghcr.io", "ab", "c"), credential.Basic("ghcr.io", "a", "bc"), key, key, false},
		{"password vs registry token with the same text", credential.Basic("ghcr.io", "", "t"), credential.RegistryToken("ghcr.io", "t"), key, key, false},
		{"password vs identity token with the same text", credential.Basic("ghcr.io", "u", "t"), credential.IdentityToken("ghcr.io", "u", "t"), key, key, false},
		{"other key", base, base, key, credential.NewSecretKey([]byte("another key")), false},
		{"empty key is the fixed public key", base, base, credential.SecretKey{}, credential.NewSecretKey(nil), true},
		{"anonymous everywhere is one identity", credential.Anonymous, credential.Anonymous, key, credential.SecretKey{}, true},
		{"anonymous differs from an empty-password user", credential.Anonymous, credential.Basic("ghcr.io", "u", ""), key, key, false},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			ia, ib := tt.a.Identity(tt.keyA), tt.b.Identity(tt.keyB)
			if (ia == ib) != tt.same {
				t.Fatalf("identities %s and %s: same=%v, want %v", ia, ib, ia == ib, tt.same)
			}
			for _, id := range []string{ia, ib} {
				if id != credential.AnonymousIdentity && !hexID.MatchString(id) {
					t.Errorf("identity %q is not 64 hex digits", id)
				}
			}
		})
	}
	if got := credential.Anonymous.Identity(key); got != "anonymous" {
		t.Errorf("anonymous identity = %q", got)
	}
}

// TestIdentityGolden pins the encoding: identities must be stable across
// processes, machines and releases, or every cached proof is lost on
// upgrade. The value was computed independently (Python hmac over the
// documented length-prefixed encoding); change it only with a new
// identityDomain version.
func TestIdentityGolden(t *testing.T) {
	key := credential.NewSecretKey([]byte("k"))
	got := credential.Basic("docker.io", "alice", "pw").Identity(key)
	const want = "24820f97844d2f719a5f7e3e1bb2ca12fa22ca968223780d4d882696009afffc"
	if got != want {
		t.Fatalf("identity = %s, want %s", got, want)
	}
}

func TestResolverIdentityUsesConfiguredKey(t *testing.T) {
	var cfg credential.Config
	if err := json.Unmarshal([]byte(`{"IdentityKey":"fleet-secret","Registries":{"ghcr.io":{"username":"u","password":"p"}}}`), &cfg); err != nil {
		t.Fatal(err)
	}
	r, err := credential.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.Resolve(context.Background(), "ghcr.io")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Identity(c), c.Identity(credential.NewSecretKey([]byte("fleet-secret"))); got != want {
		t.Fatalf("Resolver.Identity = %s, want %s", got, want)
	}
	if r.Identity(c) == c.Identity(credential.SecretKey{}) {
		t.Fatal("configured key ignored")
	}
}

func withSource(t *testing.T, c credential.Credential) credential.Credential {
	t.Helper()
	r, err := credential.New(credential.Config{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := r.Resolve(context.Background(), c.Registry, c)
	if err != nil || out.Source != credential.SourceRequest {
		t.Fatalf("Resolve = %v, %v", out, err)
	}
	return out
}

func TestDeriveSeparatesPurposesAndKeys(t *testing.T) {
	a, b := credential.NewSecretKey([]byte("fleet key A")), credential.NewSecretKey([]byte("fleet key B"))
	if string(a.Derive("x")) != string(a.Derive("x")) {
		t.Fatal("Derive is not stable")
	}
	for _, pair := range [][2][]byte{
		{a.Derive("x"), a.Derive("y")},
		{a.Derive("x"), b.Derive("x")},
		{a.Derive("x"), []byte(credential.Basic("r", "u", "p").Identity(a))},
	} {
		if string(pair[0]) == string(pair[1]) {
			t.Fatalf("derived keys collide: %x", pair[0])
		}
	}
	if len(a.Derive("x")) != 32 {
		t.Fatalf("derived key is %d bytes, want 32", len(a.Derive("x")))
	}
}
