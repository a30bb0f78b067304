// Package materialize holds what the materializers share: the image and layer
// they consume. materialize/overlay turns an image into overlayfs lower
// directories; materialize/ext4 into an ext4 disk image stored as a derived
// blob.
//
// # Reuse requires proof
//
// A materializer keeps work derived from layers (an extracted directory, a
// converted image, an extraction or conversion in progress) and hands it to
// later callers. Every such reuse is preceded by Layer.Authorize for each
// layer the work is made of: the image's caller must have proven that it
// may have the layer's bytes, not merely named their digest. Work that is
// in progress is shared only between images of one Origin, so that one
// caller's source can neither stall nor fail another's.
package materialize

import (
	"context"
	"io"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
)

// Layer is one layer of an image as a materializer consumes it.
type Layer interface {
	// Digest is the digest of the layer blob as stored (compressed).
	Digest() blob.Digest
	// MediaType is the layer's media type (gzip, zstd or uncompressed tar;
	// OCI and Docker spellings).
	MediaType() string
	// Size is the size of the layer blob as stored.
	Size() int64
	// Open returns the layer blob's bytes (still compressed), verified
	// against Digest as they are read. The caller closes the reader.
	Open(ctx context.Context) (io.ReadCloser, error)
	// Authorize returns nil when the image's caller may be handed work
	// that someone else derived from this layer's content: the caller has
	// proven it may have the blob (for the fetcher: its repository is a
	// proven member for Digest, or Authorize has just read the whole blob
	// from the caller's own registry and it verified). Otherwise it returns
	// the error that stopped the proof, and the work must not be handed
	// out. Materializers call it before every reuse.
	Authorize(ctx context.Context) error
}

// Image is a fetched image as a materializer consumes it.
type Image interface {
	// Digest is the digest of the platform manifest.
	Digest() blob.Digest
	// Layers returns the layers bottom-first (the manifest's order).
	Layers() []Layer
	// Origin names where the image's uncached content comes from and with
	// whose access (for the fetcher: "registry/repository"). Work in
	// progress is shared only between images of one Origin.
	Origin() string
	// LocalOnly reports that nothing derived from the image may be stored in
	// a shared tier (its caller may not use one: an anonymous caller).
	LocalOnly() bool
}

// Fetched adapts an image from the fetcher to what the materializers
// consume. Its layers read through the fetcher (tiers, then the registry),
// verified, with the fetching caller's authorization.
func Fetched(img *fetcher.Image) Image { return fetchedImage{img} }

type fetchedImage struct{ img *fetcher.Image }

func (f fetchedImage) Digest() blob.Digest { return f.img.Digest }

func (f fetchedImage) Origin() string { return f.img.Reference.Repo().String() }

func (f fetchedImage) LocalOnly() bool { return f.img.LocalOnly }

func (f fetchedImage) Layers() []Layer {
	ls := f.img.Layers()
	out := make([]Layer, len(ls))
	for i, l := range ls {
		out[i] = l
	}
	return out
}
