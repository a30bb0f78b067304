package fetcher

import (
	"context"
	"fmt"
	"io"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/registry"
)

// Image is a fetched, authorized image for one platform. Its manifest and
// config have been read and verified; its layers open lazily. An Image
// carries its caller's authorization and credentials: hand it only to that
// caller. It is safe for concurrent use.
type Image struct {
	// Reference is the reference the image was fetched by.
	Reference registry.Reference
	// Index is the digest of the index the manifest was selected from, or
	// empty when the reference named a manifest.
	Index blob.Digest
	// Manifest and Config are the parsed, verified documents.
	Manifest *manifest.Manifest
	Config   *manifest.Config
	// Sources names, for the index (if any), the manifest and the config,
	// the tier that served each (SourceRegistry for the registry).
	Sources map[blob.Digest]string
	// FromCache reports that resolving and authorizing made no network
	// request.
	FromCache bool
	digest    blob.Digest
	localOnly bool
	layers    []manifest.Layer
}

var (
	_ manifest.Image      = (*Image)(nil)
	_ manifest.Prefetcher = (*Layer)(nil)
)

// Digest is the digest of the platform manifest.
func (img *Image) Digest() blob.Digest { return img.digest }

// Layers returns the image's layers bottom-first, each a *Layer.
func (img *Image) Layers() []manifest.Layer { return img.layers }

// Origin is the repository the image was fetched from
// ("registry/repository"): work derived from its layers in progress is
// shared only between images of one origin.
func (img *Image) Origin() string { return img.Reference.Repo().String() }

// LocalOnly reports that the image's caller may not use the stack's shared
// tiers (an anonymous caller without Config.AnonymousShared): its layers are
// read through Store.Local(), and whatever is derived from the image for
// this caller (an ext4 image) must be stored there too.
func (img *Image) LocalOnly() bool { return img.localOnly }

// Layer is one layer of a fetched Image.
type Layer struct {
	desc   manifest.Descriptor
	access *blobAccess
	m      *metrics
}

// Digest is the digest of the layer blob.
func (l *Layer) Digest() blob.Digest { return l.desc.Digest }

// MediaType is the layer's media type.
func (l *Layer) MediaType() types.MediaType { return l.desc.MediaType }

// Size is the size of the layer blob.
func (l *Layer) Size() int64 { return l.desc.Size }

// Descriptor is the layer's descriptor from the manifest.
func (l *Layer) Descriptor() manifest.Descriptor { return l.desc }

// Open returns the layer blob's bytes (still compressed) from the highest
// tier that holds it, or from the registry while writing it into the tiers.
// Cached bytes are served only once the image's repository has proven it
// holds the blob (its registry served it for that repository before);
// until then Open reads the registry (see the package documentation).
// The reader is verified: it returns io.EOF only after the whole blob
// matched its digest. The caller must Close it.
func (l *Layer) Open(ctx context.Context) (io.ReadCloser, error) {
	rc, _, err := l.OpenInfo(ctx)
	return rc, err
}

// Authorize returns nil once the image's caller may have the layer's
// bytes, and so whatever has been derived from them: its repository is a
// proven member for the layer's digest (a ref lookup, no network), or the
// whole blob has just been read through Open from the caller's registry (or
// from the tiers, if a concurrent read proved membership meanwhile) and
// verified, which records the membership for next time. A materializer
// calls it before reusing work another caller derived from this layer (an
// extracted directory, a converted image): naming a digest in a manifest
// proves nothing. Errors are those of Open and of the read (a
// *blob.MismatchError when the caller's registry serves other bytes).
func (l *Layer) Authorize(ctx context.Context) error {
	if l.access.member(ctx, l.desc.Digest) {
		return nil
	}
	rc, _, err := l.access.fill(ctx, l.desc.Digest, l.desc.Size, "")
	if err != nil {
		return fmt.Errorf("authorize layer %s: %w", l.desc.Digest, err)
	}
	if rc == nil {
		return nil // a concurrent fill proved the membership
	}
	defer rc.Close()
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return fmt.Errorf("authorize layer %s: %w", l.desc.Digest, err)
	}
	return nil
}

// Prefetch implements manifest.Prefetcher: it downloads the layer into
// the local tiers unless they hold it already, with the caller's access
// as Open has it (an unproven repository reads its own registry, proving
// its membership; a download of the blob under way for the repository is
// waited for, not repeated).
func (l *Layer) Prefetch(ctx context.Context) error {
	d := l.desc.Digest
	local := func() bool {
		_, err := l.access.st.Local().Stat(ctx, d)
		return err == nil
	}
	switch {
	case !l.access.member(ctx, d):
		if err := l.Authorize(ctx); err != nil {
			return err
		}
	case local():
		return nil
	default:
		// A shared tier's copy, or the registry's, written back into the
		// local tiers as it is read.
		rc, err := l.Open(ctx)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("prefetch layer %s: %w", d, err)
		}
	}
	if !local() {
		return fmt.Errorf("prefetch layer %s: no local tier kept it", d)
	}
	return nil
}

// OpenInfo is Open that also reports where the bytes come from
// (blob.Info.Tier: a tier's name, or SourceRegistry).
func (l *Layer) OpenInfo(ctx context.Context) (io.ReadCloser, blob.Info, error) {
	rc, info, err := l.access.open(ctx, l.desc.Digest, l.desc.Size, "")
	if err != nil {
		return nil, blob.Info{}, fmt.Errorf("layer %s: %w", l.desc.Digest, err)
	}
	if info.Size != l.desc.Size {
		rc.Close()
		return nil, blob.Info{}, fmt.Errorf("layer %s: %w", l.desc.Digest, &blob.MismatchError{Want: l.desc.Digest, WantSize: l.desc.Size, GotSize: info.Size})
	}
	if info.Tier != SourceRegistry {
		l.m.bytesAvoided.Add(float64(info.Size))
	}
	return rc, info, nil
}
