package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/registry/credential"
	"github.com/strata-oci/strata/tiers"
)

// IsImageCached reports whether everything FetchImage needs for ref on the
// fetcher's platform (the resolved tag, the manifests, the config and every
// layer) is held by some tier, without asking the registry. It says nothing
// about whether a given caller would be admitted.
func (f *Fetcher) IsImageCached(ctx context.Context, ref string) (bool, error) {
	r, err := registry.ParseReference(ref)
	if err != nil {
		return false, err
	}
	ds, err := f.imageBlobs(ctx, f.cfg.Store, r)
	if errors.Is(err, blob.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, d := range ds.blobs {
		if _, err := f.cfg.Store.Stat(ctx, d); err != nil {
			if errors.Is(err, blob.ErrNotFound) {
				return false, nil
			}
			return false, err
		}
	}
	return true, nil
}

// imageSet is what one cached image consists of.
type imageSet struct {
	manifests []blob.Digest // the index (if any) and the platform manifests
	blobs     []blob.Digest // every digest: manifests, configs, layers
}

// imageBlobs finds, from the cache alone, the digests of the image r names.
// It includes every platform of an index that the cache holds, so that
// invalidation removes them all; a missing document is blob.ErrNotFound.
func (f *Fetcher) imageBlobs(ctx context.Context, st blob.Tier, r registry.Reference) (imageSet, error) {
	var root blob.Ref
	var err error
	if d := r.Digest(); d != "" {
		root, err = f.getRef(ctx, st, memberKey(r.Repo(), d))
		if errors.Is(err, blob.ErrNotFound) {
			info, serr := st.Stat(ctx, d)
			if serr != nil {
				return imageSet{}, serr
			}
			root, err = blob.Ref{Digest: d, Size: info.Size}, nil
		}
	} else {
		root, err = f.getRef(ctx, st, tagKey(r))
	}
	if err != nil {
		return imageSet{}, err
	}
	var set imageSet
	err = f.walkDocument(ctx, st, descOf(root), &set, true)
	return set, err
}

// walkDocument adds d and what it references to set. For an index it
// follows the fetcher's platform (required) and any other entry the cache
// holds (optional).
func (f *Fetcher) walkDocument(ctx context.Context, st blob.Tier, d manifest.Descriptor, set *imageSet, required bool) error {
	data, _, err := readSmall(d.Digest, d.Size, func() (io.ReadCloser, blob.Info, error) { return st.Open(ctx, d.Digest) })
	if err != nil {
		if !required && errors.Is(err, blob.ErrNotFound) {
			return nil
		}
		return err
	}
	doc, err := manifest.Parse(string(d.MediaType), data)
	if err != nil {
		return fmt.Errorf("cached manifest %s: %w", d.Digest, err)
	}
	set.manifests = append(set.manifests, d.Digest)
	set.blobs = append(set.blobs, d.Digest)
	if ix := doc.Index; ix != nil {
		var want manifest.Descriptor
		if required {
			if want, err = ix.Select(f.platform); err != nil {
				return err
			}
		}
		for _, c := range ix.Manifests {
			if !manifest.IsManifest(c.MediaType) && !manifest.IsIndex(c.MediaType) {
				continue
			}
			cd := manifest.Descriptor{Digest: c.Digest, Size: c.Size, MediaType: c.MediaType}
			if err := f.walkDocument(ctx, st, cd, set, required && c.Digest == want.Digest); err != nil {
				return err
			}
		}
		return nil
	}
	m := doc.Manifest
	set.blobs = append(set.blobs, m.Config.Digest)
	for _, l := range m.Layers {
		set.blobs = append(set.blobs, l.Digest)
	}
	return nil
}

// InvalidateCache forgets the image ref names: its tag, its membership and
// every access proof for its repository are removed from every tier, and
// its blobs from every local tier unless another cached image still
// references them. Proofs in tiers that cannot list refs (a remote action
// cache) can only be found for the anonymous identity; others there expire
// with their TTL.
func (f *Fetcher) InvalidateCache(ctx context.Context, ref string) error {
	r, err := registry.ParseReference(ref)
	if err != nil {
		return err
	}
	st := f.cfg.Store
	set, err := f.imageBlobs(ctx, st, r)
	if err != nil && !errors.Is(err, blob.ErrNotFound) {
		return err
	}
	var errs []error
	del := func(k blob.RefKey) {
		if err := st.DeleteRef(ctx, k); err != nil && !errors.Is(err, blob.ErrNotFound) && !errors.Is(err, blob.ErrUnsupported) {
			errs = append(errs, err)
		}
	}
	repo := r.Repo()
	if r.Digest() == "" {
		del(tagKey(r))
	}
	for _, d := range set.blobs {
		del(memberKey(repo, d))
	}
	proofs := []blob.RefKey{proofKey(repo, credential.AnonymousIdentity)}
	err = st.WalkRefs(ctx, blob.NamespaceProof, func(k blob.RefKey, _ blob.Ref) error {
		if k.Name == repo.String() {
			proofs = append(proofs, k)
		}
		return nil
	})
	if err != nil && !errors.Is(err, blob.ErrUnsupported) {
		errs = append(errs, err)
	}
	for _, k := range proofs {
		del(k)
	}

	if len(set.blobs) > 0 {
		local := st.Local()
		keep, err := f.referencedElsewhere(ctx, local)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		for _, d := range set.blobs {
			if keep[d] {
				continue
			}
			if err := local.Delete(ctx, d); err != nil && !errors.Is(err, blob.ErrNotFound) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// referencedElsewhere returns the digests that the images still recorded
// in st (by membership refs) reference.
func (f *Fetcher) referencedElsewhere(ctx context.Context, st *tiers.Stack) (map[blob.Digest]bool, error) {
	keep := map[blob.Digest]bool{}
	var roots []blob.Ref
	err := st.WalkRefs(ctx, blob.NamespaceMember, func(_ blob.RefKey, r blob.Ref) error {
		// Memberships of manifests and indexes carry their media type;
		// those of layers and configs do not, and are reached from them.
		mt := RefMediaType(r.MediaType) // listed refs are used for cleanup only, unverified
		if manifest.IsManifest(types.MediaType(mt)) || manifest.IsIndex(types.MediaType(mt)) {
			r.MediaType = mt
			roots = append(roots, r)
		}
		return nil
	})
	if err != nil && !errors.Is(err, blob.ErrUnsupported) {
		return nil, err
	}
	for _, r := range roots {
		var set imageSet
		if err := f.walkDocument(ctx, st, descOf(r), &set, false); err != nil && !errors.Is(err, blob.ErrNotFound) {
			return nil, err
		}
		for _, d := range set.blobs {
			keep[d] = true
		}
	}
	return keep, nil
}
