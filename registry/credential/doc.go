// Package credential holds registry credentials and resolves which one to
// use for a registry.
//
// A Credential never shows its secret: printing it with any fmt verb,
// marshalling it to JSON or logging it with slog shows the registry and the
// username at most. Errors from this package never contain a secret.
//
// A Resolver picks, in priority order: the credentials that came with the
// request, configured per-registry credentials (exact host, then the most
// specific "*.domain" pattern), the Docker/Podman keychain (off unless
// enabled; lookups cached for a TTL), and finally anonymous.
//
// A credential's Identity is a stable, non-reversible name for it, for use
// in cache keys; see Credential.Identity.
//
// The package knows nothing of tiers or of the registry client; it hands the
// client an authn.Authenticator.
package credential
