package credential

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/strata-oci/strata/internal/trunc"
)

// Source says where a resolved credential came from.
type Source uint8

// Credential sources, in the resolver's priority order.
const (
	SourceNone      Source = iota // built directly, not resolved
	SourceRequest                 // came with the request
	SourceConfig                  // configured per-registry credential
	SourceKeychain                // Docker/Podman keychain
	SourceAnonymous               // nothing found: anonymous
)

func (s Source) String() string {
	switch s {
	case SourceRequest:
		return "request"
	case SourceConfig:
		return "config"
	case SourceKeychain:
		return "keychain"
	case SourceAnonymous:
		return "anonymous"
	}
	return "none"
}

// Credential is what authenticates a caller at one registry: a username and
// password, an identity token (an OAuth2 refresh token, as `docker login`
// stores for some registries), or a registry token (a bearer token sent as
// is). The zero value is Anonymous.
//
// The secret is unexported and never printed: fmt (every verb, including %v,
// %+v and %#v, also inside other structs), encoding/json and log/slog show
// only Registry, Username and Source. JSON decoding (UnmarshalJSON) does read
// secrets, so configuration files can hold them; marshalling never writes
// them, so a Credential does not survive a JSON round trip.
//
// Credential is a small immutable value, safe to copy and share. It is not
// comparable with ==; compare Identity values instead.
type Credential struct {
	// Registry is the host the credential is for ("" in a request
	// credential means: the registry of the image requested).
	Registry string
	// Username may be empty for token credentials.
	Username string
	// Source says where a resolved credential came from.
	Source Source

	// reveal returns the secret. A closure, not a field: fmt and other
	// reflection-based printers can read unexported fields (when a
	// Credential sits in an unexported field of a printed struct, fmt
	// cannot call its methods) and dereference pointers, but they print a
	// func only as an address.
	reveal func() secret
}

type secret struct {
	password, identityToken, registryToken string
}

// Anonymous is the credential of a caller with none.
var Anonymous = Credential{}

// Basic returns a username/password credential for registry.
func Basic(registry, username, password string) Credential {
	return Credential{Registry: registry, Username: username, reveal: hide(secret{password: password})}
}

// IdentityToken returns a credential that authenticates with an OAuth2
// identity (refresh) token; username is usually "<token>" or empty.
func IdentityToken(registry, username, token string) Credential {
	return Credential{Registry: registry, Username: username, reveal: hide(secret{identityToken: token})}
}

// RegistryToken returns a credential that sends token as a bearer token.
func RegistryToken(registry, token string) Credential {
	return Credential{Registry: registry, reveal: hide(secret{registryToken: token})}
}

// FromAuthConfig converts what a keychain returns. A Docker config "auth"
// field (base64 "user:password") is decoded when Username and Password are
// empty; a malformed one is an error that does not echo it.
func FromAuthConfig(registry string, ac authn.AuthConfig) (Credential, error) {
	user, pass := ac.Username, ac.Password
	if user == "" && pass == "" && ac.Auth != "" {
		raw, err := base64.StdEncoding.DecodeString(ac.Auth)
		if err != nil {
			return Credential{}, fmt.Errorf("%s: \"auth\" field is not base64", credFor(registry))
		}
		var ok bool
		user, pass, ok = strings.Cut(string(raw), ":")
		if !ok {
			return Credential{}, fmt.Errorf("%s: \"auth\" field is not user:password", credFor(registry))
		}
	}
	c := Credential{Registry: registry, Username: user}
	if pass != "" || ac.IdentityToken != "" || ac.RegistryToken != "" {
		c.reveal = hide(secret{password: pass, identityToken: ac.IdentityToken, registryToken: ac.RegistryToken})
	}
	return c, nil
}

// IsAnonymous reports whether c carries no username and no secret.
func (c Credential) IsAnonymous() bool {
	return c.Username == "" && !c.hasSecret()
}

func hide(s secret) func() secret { return func() secret { return s } }

// secret returns the secret (zero when there is none).
func (c Credential) secret() secret {
	if c.reveal == nil {
		return secret{}
	}
	return c.reveal()
}

func (c Credential) hasSecret() bool { return c.secret() != secret{} }

// kind names the secret's kind, for printing.
func (c Credential) kind() string {
	s := c.secret()
	switch {
	case s.registryToken != "":
		return "registry token"
	case s.identityToken != "":
		return "identity token"
	case s.password != "":
		return "password"
	}
	return ""
}

// Authenticator returns an authn.Authenticator for c (authn.Anonymous when
// c is anonymous). The authenticator, too, never prints the secret.
func (c Credential) Authenticator() authn.Authenticator {
	if c.IsAnonymous() {
		return authn.Anonymous
	}
	return authenticator{c}
}

// with returns a copy of c for registry with source s.
func (c Credential) with(registry string, s Source) Credential {
	c.Registry, c.Source = registry, s
	return c
}

type authenticator struct{ c Credential }

// Authorization implements authn.Authenticator.
func (a authenticator) Authorization() (*authn.AuthConfig, error) {
	s := a.c.secret()
	return &authn.AuthConfig{
		Username: a.c.Username, Password: s.password, IdentityToken: s.identityToken, RegistryToken: s.registryToken,
	}, nil
}

// AuthorizationContext implements authn.ContextAuthenticator.
func (a authenticator) AuthorizationContext(context.Context) (*authn.AuthConfig, error) {
	return a.Authorization()
}

func (a authenticator) String() string                { return "authenticator for " + a.c.String() }
func (a authenticator) GoString() string              { return a.String() }
func (a authenticator) Format(f fmt.State, verb rune) { writeFormatted(f, verb, a.String()) }

// String returns `credential{registry=ghcr.io user="alice" password=<redacted>}`,
// or `credential{anonymous}`.
func (c Credential) String() string {
	if c.IsAnonymous() {
		if c.Registry == "" {
			return "credential{anonymous}"
		}
		return "credential{registry=" + c.Registry + " anonymous}"
	}
	var b strings.Builder
	b.WriteString("credential{")
	if c.Registry != "" {
		b.WriteString("registry=" + c.Registry + " ")
	}
	b.WriteString("user=" + strconv.Quote(c.Username))
	if k := c.kind(); k != "" {
		b.WriteString(" " + k + "=<redacted>")
	}
	if c.Source != SourceNone {
		b.WriteString(" source=" + c.Source.String())
	}
	b.WriteString("}")
	return b.String()
}

// GoString implements fmt.GoStringer (%#v) without the secret.
func (c Credential) GoString() string { return c.String() }

// Format implements fmt.Formatter: every verb prints String (quoted for %q).
func (c Credential) Format(f fmt.State, verb rune) { writeFormatted(f, verb, c.String()) }

func writeFormatted(f fmt.State, verb rune, s string) {
	if verb == 'q' {
		s = strconv.Quote(s)
	}
	_, _ = f.Write([]byte(s))
}

// LogValue implements slog.LogValuer: registry, username and source only.
func (c Credential) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("registry", c.Registry),
		slog.String("username", c.Username),
		slog.Bool("anonymous", c.IsAnonymous()),
		slog.String("source", c.Source.String()),
	)
}

type wireCredential struct {
	Registry      string `json:"registry,omitempty"`
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	IdentityToken string `json:"identityToken,omitempty"`
	RegistryToken string `json:"registryToken,omitempty"`
	Auth          string `json:"auth,omitempty"`
}

// MarshalJSON writes registry, username and source, never the secret.
func (c Credential) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Registry  string `json:"registry,omitempty"`
		Username  string `json:"username,omitempty"`
		Anonymous bool   `json:"anonymous"`
		Source    string `json:"source,omitempty"`
	}{c.Registry, c.Username, c.IsAnonymous(), c.Source.String()})
}

// UnmarshalJSON reads {"registry", "username", "password", "identityToken",
// "registryToken", "auth"} (all optional; "auth" is Docker's base64
// "user:password"), as configuration files write them. Unknown fields are
// errors. Errors never echo a value.
func (c *Credential) UnmarshalJSON(b []byte) error {
	var w wireCredential
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return fmt.Errorf("%w: credential: want an object with registry, username, password, identityToken, registryToken", ErrInvalidConfig)
	}
	if w.Auth != "" && (w.Username != "" || w.Password != "") {
		return fmt.Errorf("%w: credential: \"auth\" together with username or password", ErrInvalidConfig)
	}
	out, err := FromAuthConfig(w.Registry, authn.AuthConfig{
		Username: w.Username, Password: w.Password, Auth: w.Auth,
		IdentityToken: w.IdentityToken, RegistryToken: w.RegistryToken,
	})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	*c = out
	return nil
}

func credFor(registry string) string {
	if registry == "" {
		return "credential"
	}
	return "credential for " + trunc.String(redactUserinfo(registry), 100)
}
