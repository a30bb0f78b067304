package credential

import "errors"

// Sentinel errors; test with errors.Is. Their messages never carry a
// secret.
var (
	// ErrInvalidRegistry: a registry host or pattern is malformed.
	ErrInvalidRegistry = errors.New("invalid registry host")
	// ErrInvalidConfig: the resolver's Config is inconsistent.
	ErrInvalidConfig = errors.New("invalid credential config")
	// ErrKeychain: the Docker/Podman keychain failed.
	ErrKeychain = errors.New("keychain lookup failed")
)
