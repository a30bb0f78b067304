package credential

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"log/slog"
	"strings"
)

// AnonymousIdentity is the identity of every anonymous credential.
const AnonymousIdentity = "anonymous"

// identityDomain separates these HMACs from any other use of the same key.
const identityDomain = "strata/credential-identity/v1"

// SecretKey is the fleet-wide key identities are computed with. Like a
// Credential it never prints (every fmt verb, JSON and slog show
// "<redacted>", reflection sees only a func); JSON decoding reads a string
// as the key's bytes. The zero value is the empty key.
type SecretKey struct {
	reveal func() []byte
}

// NewSecretKey returns a key holding a copy of b.
func NewSecretKey(b []byte) SecretKey {
	b = bytes.Clone(b)
	return SecretKey{reveal: func() []byte { return b }}
}

func (k SecretKey) bytes() []byte {
	if k.reveal == nil {
		return nil
	}
	return k.reveal()
}

// IsZero reports whether the key is empty.
func (k SecretKey) IsZero() bool { return len(k.bytes()) == 0 }

// LogValue implements slog.LogValuer.
func (k SecretKey) LogValue() slog.Value { return slog.StringValue(k.String()) }

func (k SecretKey) String() string                { return "<redacted>" }
func (k SecretKey) GoString() string              { return k.String() }
func (k SecretKey) Format(f fmt.State, verb rune) { writeFormatted(f, verb, k.String()) }

// MarshalJSON writes "<redacted>".
func (k SecretKey) MarshalJSON() ([]byte, error) { return json.Marshal(k.String()) }

// UnmarshalJSON reads a JSON string as the key's bytes.
func (k *SecretKey) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("%w: identity key must be a string", ErrInvalidConfig)
	}
	*k = NewSecretKey([]byte(s))
	return nil
}

// Identity returns a stable, non-reversible name for c, for use in cache
// keys (access proofs, collapsed fetches): the hex HMAC-SHA256, keyed by
// key, of a length-prefixed encoding of the normalized registry, the
// username and each secret field with its kind. It promises:
//
//   - stable across processes and machines given the same key (no
//     randomness, no process state);
//   - different for different registries (Docker Hub aliases are one
//     registry), usernames, secrets and secret kinds, with no ambiguity
//     from concatenation;
//   - AnonymousIdentity ("anonymous") for every anonymous credential, which
//     no other credential's identity can equal (those are 64 hex digits).
//
// Source does not take part. An empty key uses a fixed public one. An
// identity is a hash of the secret: with a public key anyone who sees
// identities (in a shared cache such as a REAPI action cache) can test
// password guesses offline, and a low-entropy password falls quickly.
// Deployments that share caches or proofs between machines must configure
// a secret key (32 random bytes) and use the same one everywhere.
func (c Credential) Identity(key SecretKey) string {
	if c.IsAnonymous() {
		return AnonymousIdentity
	}
	k := key.bytes()
	if len(k) == 0 {
		k = []byte(identityDomain)
	}
	reg, err := NormalizeRegistry(c.Registry)
	if err != nil {
		reg = "invalid:" + strings.ToLower(c.Registry)
	}
	s := c.secret()
	mac := hmac.New(sha256.New, k)
	for _, field := range []string{identityDomain, reg, c.Username, s.password, s.identityToken, s.registryToken} {
		writeField(mac, field)
	}
	return hex.EncodeToString(mac.Sum(nil))
}

// writeField writes len(field) as 8 bytes big-endian, then field.
func writeField(h hash.Hash, field string) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(field)))
	h.Write(n[:])
	h.Write([]byte(field))
}

// Derive returns a 32-byte key for purpose, derived from k (HMAC-SHA256 of a
// domain-separated purpose). Different purposes give independent keys, so
// one configured secret can key identities and, say, ref signatures without
// either revealing the other. An empty k derives from the fixed public key,
// and so gives no secrecy.
func (k SecretKey) Derive(purpose string) []byte {
	kb := k.bytes()
	if len(kb) == 0 {
		kb = []byte(identityDomain)
	}
	mac := hmac.New(sha256.New, kb)
	writeField(mac, "strata/derive")
	writeField(mac, purpose)
	return mac.Sum(nil)
}
