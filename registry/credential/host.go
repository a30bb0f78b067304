package credential

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/strata-oci/strata/internal/trunc"
)

// DockerHub is the canonical host of Docker Hub, as go-containerregistry
// names it.
const DockerHub = "index.docker.io"

// dockerHubAliases are the names Docker Hub goes by; they are one registry.
var dockerHubAliases = map[string]bool{
	"docker.io": true, "index.docker.io": true, "registry-1.docker.io": true,
}

var hostRE = regexp.MustCompile(`^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?$`)

// NormalizeRegistry returns the canonical form of a registry host: lower
// case, with the Docker Hub aliases (docker.io, index.docker.io,
// registry-1.docker.io) mapped to DockerHub. A port is kept. A scheme, path,
// user info or anything that is not a host[:port] is an error wrapping
// ErrInvalidRegistry.
func NormalizeRegistry(host string) (string, error) {
	h := strings.ToLower(host)
	if len(h) > 255 || !hostRE.MatchString(h) {
		return "", fmt.Errorf("%w: %q (want host[:port], e.g. ghcr.io or registry.local:5000)", ErrInvalidRegistry, trunc.String(redactUserinfo(host), 100))
	}
	if dockerHubAliases[h] {
		return DockerHub, nil
	}
	return h, nil
}

// splitPort splits "host:port" (the port may be absent).
func splitPort(h string) (host, port string) {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.HasSuffix(h, "]") {
		return h[:i], h[i+1:]
	}
	return h, ""
}

// pattern is a configured "*.domain[:port]" entry.
type pattern struct {
	raw    string // as configured, for errors
	suffix string // ".domain"
	port   string
	cred   Credential
}

// parsePattern parses "*.domain[:port]".
func parsePattern(p string) (pattern, error) {
	rest, ok := strings.CutPrefix(p, "*.")
	if !ok {
		return pattern{}, fmt.Errorf("%w: pattern %q must be a host or *.domain", ErrInvalidRegistry, trunc.String(redactUserinfo(p), 100))
	}
	h := strings.ToLower(rest)
	if !hostRE.MatchString(h) || strings.HasPrefix(h, "[") {
		return pattern{}, fmt.Errorf("%w: pattern %q: malformed domain", ErrInvalidRegistry, trunc.String(redactUserinfo(p), 100))
	}
	host, port := splitPort(h)
	return pattern{raw: p, suffix: "." + host, port: port}, nil
}

// matches reports whether a normalized host falls under the pattern: any
// host ending in ".domain" (at any depth, not the domain itself) with the
// same port (none when the pattern has none).
func (p pattern) matches(host string) bool {
	h, port := splitPort(host)
	return port == p.port && strings.HasSuffix(h, p.suffix)
}

// redactUserinfo hides what precedes an '@' (a URL's user:password).
func redactUserinfo(s string) string {
	if i := strings.LastIndexByte(s, '@'); i >= 0 {
		head, tail := s[:i], s[i:]
		if j := strings.Index(head, "://"); j >= 0 {
			return head[:j+3] + "<redacted>" + tail
		}
		return "<redacted>" + tail
	}
	return s
}
