package fetcher

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/registry/credential"
	"github.com/strata-oci/strata/tiers"
)

// Defaults for Config's durations (DefaultConfig sets them).
const (
	DefaultTagTTL   = 15 * time.Minute
	DefaultProofTTL = 15 * time.Minute
)

// SourceRegistry is the tier name reported (blob.Info.Tier) for bytes that
// came from the registry.
const SourceRegistry = "registry"

// Config configures a Fetcher.
type Config struct {
	// Store is the tier stack blobs and refs are kept in. Required.
	Store *tiers.Stack
	// Registry is the client used for every registry request. Required.
	Registry *registry.Client
	// Credentials resolves the credential of a request (request credential,
	// configured ones, keychain, anonymous). When nil, the request's own
	// credential is used as given, and IdentityKey keys identities.
	Credentials *credential.Resolver
	// IdentityKey keys credential identities when Credentials is nil.
	IdentityKey credential.SecretKey
	// Platform selects the manifest from an index; the zero value means
	// manifest.Default().
	Platform manifest.Platform
	// TagTTL is how long a resolved tag is trusted without asking the
	// registry; 0 always asks.
	TagTTL time.Duration
	// ProofTTL is how long an access proof admits a caller without asking
	// the registry; 0 always asks.
	ProofTTL time.Duration
	// AnonymousShared lets anonymous callers read and write the stack's
	// shared tiers. Off by default: anonymous callers use Store.Local().
	AnonymousShared bool
	// SigningKey signs the refs that decide access (tags, proofs, membership):
	// a ref is trusted only if its signature verifies, so whoever can
	// write a shared tier cannot forge one. Executors that share proofs
	// and membership through a shared tier must share this key (derive it
	// from the fleet's identity key). Empty: New draws a random key, and
	// refs are trusted by this Fetcher only (nothing survives a restart).
	SigningKey []byte
	// Metrics, when set, receives the fetcher's metrics.
	Metrics prometheus.Registerer
	// Logger receives a Debug line for every signed ref ignored because its
	// signature does not verify (another fleet's key, or a forgery); nil
	// discards them. Credentials are never logged.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Leases, when its Store is set, collapses pulls across the executors
	// that share that tier (see Leases).
	Leases Leases
}

// DefaultConfig returns a Config with the default TTLs; the caller sets
// Store and Registry.
func DefaultConfig() Config {
	return Config{TagTTL: DefaultTagTTL, ProofTTL: DefaultProofTTL}
}
