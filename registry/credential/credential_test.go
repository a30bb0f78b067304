package credential_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/strata-oci/strata/registry/credential"
)

const (
	secretPassword = "hunter2-PASSWORD-must-not-leak"
	secretToken    = "eyJ-TOKEN-must-not-leak"
	secretIdentity = "refresh-IDENTITY-must-not-leak"
)

var secrets = []string{secretPassword, secretToken, secretIdentity}

func assertNoSecret(t *testing.T, what, out string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("%s leaks a secret: %s", what, out)
		}
	}
}

// holder puts Credentials where fmt cannot call their methods: in
// unexported fields, by value and in collections.
type holder struct {
	cred  credential.Credential
	list  []credential.Credential
	m     map[string]credential.Credential
	ptr   *credential.Credential
	key   credential.SecretKey
	Cfg   credential.Config
	Auth  authn.Authenticator
	auth2 authn.Authenticator
}

func TestCredentialNeverPrintsSecret(t *testing.T) {
	creds := []struct {
		desc string
		c    credential.Credential
		user string
	}{
		{"basic", credential.Basic("ghcr.io", "alice", secretPassword), "alice"},
		{"registry token", credential.RegistryToken("ghcr.io", secretToken), ""},
		{"identity token", credential.IdentityToken("myregistry.azurecr.io", "<token>", secretIdentity), "<token>"},
	}
	for _, tt := range creds {
		t.Run(tt.desc, func(t *testing.T) {
			c := tt.c
			auth := c.Authenticator()
			h := holder{
				cred: c, list: []credential.Credential{c}, m: map[string]credential.Credential{"k": c}, ptr: &c,
				key:  credential.NewSecretKey([]byte(secretPassword)),
				Cfg:  credential.Config{Registries: map[string]credential.Credential{"ghcr.io": c}, IdentityKey: credential.NewSecretKey([]byte(secretToken))},
				Auth: auth, auth2: auth,
			}
			values := map[string]any{"value": c, "pointer": &c, "holder": h, "holder pointer": &h, "authenticator": auth,
				"key": credential.NewSecretKey([]byte(secretIdentity)), "config": h.Cfg}
			verbs := []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T", "%p"}
			for name, v := range values {
				for _, verb := range verbs {
					assertNoSecret(t, name+" "+verb, fmt.Sprintf(verb, v))
				}
				assertNoSecret(t, name+" Sprint", fmt.Sprint(v))
				assertNoSecret(t, name+" Sprintln", fmt.Sprintln(v))
			}
			if got := fmt.Sprintf("%v", c); tt.user != "" && !strings.Contains(got, tt.user) {
				t.Errorf("%%v = %s, want the username shown", got)
			}
			for name, v := range map[string]any{"value": c, "pointer": &c, "slice": []credential.Credential{c}, "config": h.Cfg} {
				b, err := json.Marshal(v)
				if err != nil {
					t.Fatalf("json %s: %v", name, err)
				}
				assertNoSecret(t, "json "+name, string(b))
			}
			var buf bytes.Buffer
			for _, handler := range []slog.Handler{slog.NewJSONHandler(&buf, nil), slog.NewTextHandler(&buf, nil)} {
				l := slog.New(handler)
				l.Info("resolved", "cred", c, "ptr", &c, "key", credential.NewSecretKey([]byte(secretPassword)), "cfg", h.Cfg)
				l.Info("resolved", slog.Any("cred", c))
			}
			assertNoSecret(t, "slog", buf.String())
			if !strings.Contains(buf.String(), "ghcr.io") && c.Registry == "ghcr.io" {
				t.Errorf("slog output lacks the registry: %s", buf.String())
			}
			// The secret is there for the registry client.
			ac, err := auth.Authorization()
			if err != nil || ac.Password+ac.RegistryToken+ac.IdentityToken == "" {
				t.Fatalf("Authorization() = %v, %v", ac == nil, err)
			}
		})
	}
}

func TestAuthenticator(t *testing.T) {
	tests := []struct {
		desc string
		c    credential.Credential
		want authn.AuthConfig
	}{
		{"basic", credential.Basic("ghcr.io", "u", "p"), authn.AuthConfig{Username: "u", Password: "p"}},
		{"registry token", credential.RegistryToken("ghcr.io", "t"), authn.AuthConfig{RegistryToken: "t"}},
		{"identity token", credential.IdentityToken("ghcr.io", "<token>", "r"), authn.AuthConfig{Username: "<token>", IdentityToken: "r"}},
		{"anonymous", credential.Anonymous, authn.AuthConfig{}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			a := tt.c.Authenticator()
			if tt.c.IsAnonymous() && a != authn.Anonymous {
				t.Errorf("anonymous Authenticator() = %v, want authn.Anonymous", a)
			}
			ac, err := a.Authorization()
			if err != nil || *ac != tt.want {
				t.Fatalf("Authorization() = %+v, %v; want %+v", ac, err, tt.want)
			}
		})
	}
}

func TestCredentialJSONDecoding(t *testing.T) {
	var c credential.Credential
	if err := json.Unmarshal([]byte(`{"registry":"ghcr.io","username":"bob","password":"`+secretPassword+`"}`), &c); err != nil {
		t.Fatal(err)
	}
	ac, _ := c.Authenticator().Authorization()
	if c.Registry != "ghcr.io" || ac.Username != "bob" || ac.Password != secretPassword {
		t.Fatalf("decoded %v", c)
	}
	if err := json.Unmarshal([]byte(`{"auth":"Ym9iOnB3"}`), &c); err != nil { // bob:pw
		t.Fatal(err)
	}
	if ac, _ := c.Authenticator().Authorization(); ac.Username != "bob" || ac.Password != "pw" {
		t.Fatalf("auth field decoded to %q/%q", ac.Username, ac.Password)
	}
	for _, bad := range []string{`{"auth":"!` + secretPassword + `"}`, `{"auth":"Ym9iOnB3","password":"` + secretPassword + `"}`, `{"password":1}`, `{"passwd":"` + secretPassword + `"}`, `"` + secretPassword + `"`, `{"password":"` + secretPassword + `"`} {
		err := json.Unmarshal([]byte(bad), &c)
		if err == nil {
			t.Errorf("Unmarshal(%s) succeeded", bad)
			continue
		}
		assertNoSecret(t, "decode error", err.Error())
	}
}

func TestFromAuthConfig(t *testing.T) {
	tests := []struct {
		desc     string
		ac       authn.AuthConfig
		user     string
		password string
		ok       bool
	}{
		{"username and password", authn.AuthConfig{Username: "u", Password: "p"}, "u", "p", true},
		{"docker auth field", authn.AuthConfig{Auth: "dTpwOnE="}, "u", "p:q", true}, // u:p:q
		{"auth field not base64", authn.AuthConfig{Auth: "!" + secretPassword}, "", "", false},
		{"auth field without colon", authn.AuthConfig{Auth: "aHVudGVyMg=="}, "", "", false},
		{"empty is anonymous", authn.AuthConfig{}, "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c, err := credential.FromAuthConfig("ghcr.io", tt.ac)
			if !tt.ok {
				if err == nil {
					t.Fatal("want error")
				}
				assertNoSecret(t, "error", err.Error())
				if strings.Contains(err.Error(), tt.ac.Auth) {
					t.Errorf("error echoes the auth field: %v", err)
				}
				return
			}
			ac, _ := c.Authenticator().Authorization()
			if err != nil || ac.Username != tt.user || ac.Password != tt.password {
				t.Fatalf("FromAuthConfig = %+v, %v", ac, err)
			}
		})
	}
}
