package fetcher

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/registry"
)

// source is the registry, for one repository and one caller's credentials,
// as a read-only tier below the stack (tiers.Stack.WithSource). It serves
// only digests the fetcher has announced (from a manifest it trusts), with
// their sizes, so every download is size-capped and verified; manifests are
// fetched from the manifests endpoint, everything else from blobs.
type source struct {
	client *registry.Client
	repo   registry.Repository
	auth   authn.Authenticator

	mu    sync.Mutex
	sizes map[blob.Digest]int64
	types map[blob.Digest]string // media types of manifests and indexes
}

func newSource(c *registry.Client, repo registry.Repository, auth authn.Authenticator) *source {
	return &source{client: c, repo: repo, auth: auth, sizes: map[blob.Digest]int64{}, types: map[blob.Digest]string{}}
}

// size returns the announced size of d (0 if d was not announced).
func (s *source) size(d blob.Digest) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sizes[d]
}

// expect announces d, of size bytes. A manifest or index is announced
// with its media type (served from the manifests endpoint); any other blob
// with "" (served from the blobs endpoint).
func (s *source) expect(d blob.Digest, size int64, manifestType string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sizes[d] = size
	if manifestType != "" {
		s.types[d] = manifestType
	}
}

func (s *source) lookup(d blob.Digest) (size int64, manifestType string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	size, ok = s.sizes[d]
	return size, s.types[d], ok
}

func (s *source) Name() string { return SourceRegistry }

// Stat answers for announced digests without a request: the manifest that
// lists them says they exist, and Open verifies.
func (s *source) Stat(_ context.Context, d blob.Digest) (blob.Info, error) {
	size, _, ok := s.lookup(d)
	if !ok {
		return blob.Info{}, fmt.Errorf("registry %s: %s: %w (not listed by a fetched manifest)", s.repo, d, blob.ErrNotFound)
	}
	return blob.Info{Digest: d, Size: size, Tier: SourceRegistry}, nil
}

func (s *source) Open(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	size, manifestType, ok := s.lookup(d)
	if !ok {
		return nil, blob.Info{}, fmt.Errorf("registry %s: %s: %w (not listed by a fetched manifest)", s.repo, d, blob.ErrNotFound)
	}
	info := blob.Info{Digest: d, Size: size, Tier: SourceRegistry}
	if manifestType != "" {
		ref, err := s.repo.Digest(d)
		if err != nil {
			return nil, blob.Info{}, err
		}
		data, desc, err := s.client.Manifest(ctx, ref, s.auth)
		if err != nil {
			return nil, blob.Info{}, err
		}
		if desc.Size != size {
			return nil, blob.Info{}, &blob.MismatchError{Want: d, WantSize: size, Got: desc.Digest, GotSize: desc.Size}
		}
		return io.NopCloser(bytes.NewReader(data)), info, nil
	}
	rc, err := s.client.Blob(ctx, s.repo, d, size, s.auth)
	if err != nil {
		return nil, blob.Info{}, err
	}
	return rc, info, nil
}

func (s *source) readOnly(op string) error {
	return fmt.Errorf("registry %s: %s: %w", s.repo, op, blob.ErrUnsupported)
}

func (s *source) Put(context.Context, blob.Digest, int64, io.Reader) error { return s.readOnly("put") }
func (s *source) Delete(context.Context, blob.Digest) error                { return s.readOnly("delete") }
func (s *source) Walk(context.Context, func(blob.Info) error) error        { return s.readOnly("walk") }
func (s *source) GetRef(_ context.Context, k blob.RefKey) (blob.Ref, error) {
	return blob.Ref{}, fmt.Errorf("registry %s: ref %s: %w", s.repo, k, blob.ErrNotFound)
}
func (s *source) PutRef(context.Context, blob.RefKey, blob.Ref) error { return s.readOnly("put ref") }
func (s *source) DeleteRef(context.Context, blob.RefKey) error        { return s.readOnly("delete ref") }
func (s *source) WalkRefs(context.Context, string, func(blob.RefKey, blob.Ref) error) error {
	return s.readOnly("walk refs")
}
func (s *source) Usage(context.Context) (blob.Usage, error) { return blob.Usage{}, s.readOnly("usage") }
func (s *source) Close() error                              { return nil }

var _ blob.Tier = (*source)(nil)
