package fetcher

import (
	"bytes"
	"context"
	"io"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/tiers"
)

// registrySource reads one blob of one repository from the registry with
// one caller's credentials: the tiers.Source of the stack's Fill and
// OpenOrFill. A manifest or index (manifestType set) comes from the
// manifests endpoint, anything else from blobs; either way at most size
// bytes are read, and the stack verifies them against the digest.
//
// Every registry read of a blob the fetcher makes goes through Open: the
// place where a fleet-wide lease ("another executor is pulling this blob")
// would be consulted before pulling.
type registrySource struct {
	client       *registry.Client
	repo         registry.Repository
	auth         authn.Authenticator
	d            blob.Digest
	size         int64
	manifestType string
}

var _ tiers.Source = registrySource{}

// Name is SourceRegistry, which the stack reports as the tier that served
// the bytes.
func (s registrySource) Name() string { return SourceRegistry }

// Open implements tiers.Source.
func (s registrySource) Open(ctx context.Context) (io.ReadCloser, error) {
	if s.manifestType == "" {
		return s.client.Blob(ctx, s.repo, s.d, s.size, s.auth)
	}
	ref, err := s.repo.Digest(s.d)
	if err != nil {
		return nil, err
	}
	data, desc, err := s.client.Manifest(ctx, ref, s.auth)
	if err != nil {
		return nil, err
	}
	if desc.Size != s.size {
		return nil, &blob.MismatchError{Want: s.d, WantSize: s.size, Got: desc.Digest, GotSize: desc.Size}
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}
