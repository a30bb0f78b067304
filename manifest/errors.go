package manifest

import "errors"

// Sentinel errors; test with errors.Is.
var (
	// ErrInvalid: the document breaks a rule of the OCI or Docker
	// specification (malformed JSON, missing or wrong field).
	ErrInvalid = errors.New("invalid document")
	// ErrSchema1: a Docker v2 schema 1 manifest, which is not supported.
	ErrSchema1 = errors.New("docker schema 1 manifests are not supported (deprecated by Docker; push the image again with a current client to get a schema 2 or OCI manifest)")
	// ErrMediaTypeMismatch: the declared (Content-Type) and the embedded
	// media type disagree, or the structure contradicts the media type.
	ErrMediaTypeMismatch = errors.New("media type mismatch")
	// ErrUnknownMediaType: a media type this package does not support where
	// it needs to know it (a document, an image layer, a config).
	ErrUnknownMediaType = errors.New("unknown media type")
	// ErrInvalidPlatform: a malformed platform specifier.
	ErrInvalidPlatform = errors.New("invalid platform")
	// ErrNoMatchingPlatform: an index holds no manifest for the wanted
	// platform.
	ErrNoMatchingPlatform = errors.New("no manifest for the wanted platform")
	// ErrConfigMismatch: a config does not belong to a manifest (digest,
	// size or layer count disagree).
	ErrConfigMismatch = errors.New("config does not match manifest")
)
