package registry

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/strata-oci/strata/blob"
)

var (
	tagRE      = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	repoRE     = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	registryRE = regexp.MustCompile(`^(?:(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])(?:\.(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]))*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$`)
)

const tagRule = "a tag is 1 to 128 characters of [A-Za-z0-9_.-] and does not start with '.' or '-'"

// Reference is a parsed, normalized image reference: a repository plus a tag,
// a digest, or both. The zero value is not valid; use ParseReference or
// Repository.Tag / Repository.Digest. Reference is a small value type, safe
// to copy and compare with ==.
type Reference struct {
	repo   Repository
	tag    string
	digest blob.Digest
}

// ParseReference parses s ("ubuntu", "ghcr.io/o/r:v1", "host:5000/r@sha256:...",
// "r:tag@sha256:...") with Docker Hub normalization: a missing registry is
// index.docker.io ("docker.io" is rewritten to it), a single-component Docker
// Hub repository gets "library/", and a reference with neither tag nor digest
// gets the tag "latest". Digests must be sha256. A malformed reference is an
// error wrapping ErrInvalidReference that names the offending part
// (registry, repository, tag or digest).
func ParseReference(s string) (Reference, error) {
	if s == "" {
		return Reference{}, fmt.Errorf("%w: empty reference", ErrInvalidReference)
	}
	if len(s) > 4096 {
		return Reference{}, fmt.Errorf("%w: reference is %d bytes long (at most 4096)", ErrInvalidReference, len(s))
	}
	rest := s
	var ref Reference
	if i := strings.IndexByte(rest, '@'); i >= 0 {
		ds := rest[i+1:]
		rest = rest[:i]
		d, err := blob.ParseDigest(ds)
		if err != nil {
			return Reference{}, fmt.Errorf("%w %q: bad digest %q: %w", ErrInvalidReference, clip(s), clip(ds), err)
		}
		ref.digest = d
	}
	// A tag follows the last ':' that comes after the last '/'; a ':' before
	// any '/' belongs to a registry port.
	if i := strings.LastIndexByte(rest, ':'); i >= 0 && i > strings.LastIndexByte(rest, '/') {
		tag := rest[i+1:]
		rest = rest[:i]
		if !tagRE.MatchString(tag) {
			return Reference{}, fmt.Errorf("%w %q: bad tag %q: %s", ErrInvalidReference, clip(s), clip(tag), tagRule)
		}
		ref.tag = tag
	}
	repo, err := ParseRepository(rest)
	if err != nil {
		return Reference{}, fmt.Errorf("%w %q: %w", ErrInvalidReference, clip(s), unwrapInvalid(err))
	}
	ref.repo = repo
	if ref.tag == "" && ref.digest == "" {
		ref.tag = name.DefaultTag
	}
	return ref, nil
}

// ParseRepository parses a repository name with an optional registry
// ("ubuntu", "quay.io/org/repo", "127.0.0.1:5000/x"), normalized like
// ParseReference. A tag or digest is an error.
func ParseRepository(s string) (Repository, error) {
	if s == "" {
		return Repository{}, fmt.Errorf("%w: empty repository", ErrInvalidReference)
	}
	if strings.ContainsAny(s, "@") {
		return Repository{}, fmt.Errorf("%w %q: a repository name has no digest", ErrInvalidReference, clip(s))
	}
	regStr, repoStr := "", s
	if i := strings.IndexByte(s, '/'); i >= 0 {
		first := s[:i]
		if first == "localhost" || strings.ContainsAny(first, ".:") {
			regStr, repoStr = first, s[i+1:]
		}
	}
	if regStr != "" {
		if !registryRE.MatchString(regStr) {
			return Repository{}, fmt.Errorf("%w: bad registry %q: a registry is a host name, IPv4 address or [IPv6] address with an optional :port", ErrInvalidReference, clip(regStr))
		}
	}
	if strings.Contains(repoStr, ":") {
		return Repository{}, fmt.Errorf("%w: bad repository %q: a repository name has no tag", ErrInvalidReference, clip(repoStr))
	}
	full := repoStr
	if regStr != "" {
		full = regStr + "/" + repoStr
	}
	r, err := name.NewRepository(full, name.WeakValidation)
	if err == nil && (!repoRE.MatchString(r.RepositoryStr()) || len(r.RepositoryStr()) > 255) {
		err = ErrInvalidReference
	}
	if err == nil {
		// Rebuild from the normalized parts so equal references compare
		// equal ("ubuntu" and "library/ubuntu" on Docker Hub).
		r, err = name.NewRepository(r.RegistryStr()+"/"+r.RepositoryStr(), name.WeakValidation)
	}
	if err != nil {
		return Repository{}, fmt.Errorf("%w: bad repository %q: components are lowercase [a-z0-9] separated by '.', '_', '__' or '-', joined by '/', at most 255 characters", ErrInvalidReference, clip(repoStr))
	}
	return Repository{repo: r}, nil
}

// unwrapInvalid strips the leading ErrInvalidReference from an error made by
// ParseRepository so ParseReference does not say it twice.
func unwrapInvalid(err error) error {
	msg := strings.TrimPrefix(err.Error(), ErrInvalidReference.Error())
	return fmt.Errorf("%s", strings.TrimPrefix(msg, ": "))
}

func clip(s string) string {
	if len(s) <= 200 {
		return s
	}
	return s[:200] + "..."
}

// Repo returns the reference's repository.
func (r Reference) Repo() Repository { return r.repo }

// Registry returns the registry host, normalized ("index.docker.io" for Docker Hub).
func (r Reference) Registry() string { return r.repo.Registry() }

// Repository returns the repository path within the registry ("library/ubuntu").
func (r Reference) Repository() string { return r.repo.Name() }

// Tag returns the tag, or "" for a reference by digest only.
func (r Reference) Tag() string { return r.tag }

// Digest returns the digest, or "" for a reference by tag.
func (r Reference) Digest() blob.Digest { return r.digest }

// Identifier returns what the registry is asked for: the digest when there
// is one, else the tag.
func (r Reference) Identifier() string {
	if r.digest != "" {
		return string(r.digest)
	}
	return r.tag
}

// String returns the fully qualified form, "registry/repo:tag",
// "registry/repo@digest" or "registry/repo:tag@digest".
func (r Reference) String() string {
	s := r.repo.String()
	if r.tag != "" {
		s += ":" + r.tag
	}
	if r.digest != "" {
		s += "@" + string(r.digest)
	}
	return s
}

// Repository is a normalized repository in a registry. The zero value is not
// valid; use ParseRepository or Reference.Repo. Safe to copy and compare.
type Repository struct {
	repo name.Repository
}

// Registry returns the registry host ("index.docker.io", "ghcr.io", "127.0.0.1:5000").
func (r Repository) Registry() string { return r.repo.RegistryStr() }

// Name returns the repository path within the registry ("library/ubuntu").
func (r Repository) Name() string { return r.repo.RepositoryStr() }

// String returns "registry/name".
func (r Repository) String() string { return r.Registry() + "/" + r.Name() }

// Tag returns a reference to tag in this repository.
func (r Repository) Tag(tag string) (Reference, error) {
	if !tagRE.MatchString(tag) {
		return Reference{}, fmt.Errorf("%w %s: bad tag %q: %s", ErrInvalidReference, r, clip(tag), tagRule)
	}
	return Reference{repo: r, tag: tag}, nil
}

// Digest returns a reference to digest d (sha256 only) in this repository.
func (r Repository) Digest(d blob.Digest) (Reference, error) {
	if err := blob.ValidateDigest(d); err != nil {
		return Reference{}, fmt.Errorf("%w %s: bad digest: %w", ErrInvalidReference, r, err)
	}
	return Reference{repo: r, digest: d}, nil
}

func (r Repository) valid() bool { return r.repo.RepositoryStr() != "" }
