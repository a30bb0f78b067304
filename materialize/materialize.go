// Package materialize holds what the materializers share: the image and layer
// they consume. materialize/overlay turns an image into overlayfs lower
// directories; materialize/ext4 into an ext4 disk image stored as a derived
// blob.
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
}

// Image is a fetched image as a materializer consumes it.
type Image interface {
	// Digest is the digest of the platform manifest.
	Digest() blob.Digest
	// Layers returns the layers bottom-first (the manifest's order).
	Layers() []Layer
}

// Fetched adapts an image from the fetcher to what the materializers
// consume. Its layers read through the fetcher (tiers, then the registry),
// verified, with the fetching caller's authorization.
func Fetched(img *fetcher.Image) Image { return fetchedImage{img} }

type fetchedImage struct{ img *fetcher.Image }

func (f fetchedImage) Digest() blob.Digest { return f.img.Digest }

func (f fetchedImage) Layers() []Layer {
	ls := f.img.Layers()
	out := make([]Layer, len(ls))
	for i, l := range ls {
		out[i] = l
	}
	return out
}
