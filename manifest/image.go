package manifest

import (
	"context"
	"io"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/strata-oci/strata/blob"
)

// Image is a fetched image for one platform, as its consumers (the
// materializers, blobctl's warm-up) see it: the model that fetcher.Image
// implements, with no I/O of its own in this package.
//
// # Reuse requires proof
//
// A consumer that keeps work derived from layers (an extracted directory, a
// converted image, an extraction or conversion in progress) and hands it to
// later callers calls Layer.Authorize for each layer the work is made of
// before every such reuse: the image's caller must have proven that it may
// have the layer's bytes, not merely named their digest. Work in progress is
// shared only between images of one Origin, so that one caller's source can
// neither stall nor fail another's.
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

// Layer is one layer of an Image.
type Layer interface {
	// Digest is the digest of the layer blob as stored (compressed).
	Digest() blob.Digest
	// MediaType is the layer's media type (gzip, zstd or uncompressed tar;
	// OCI and Docker spellings); Compression maps it to a codec.
	MediaType() types.MediaType
	// Size is the size of the layer blob as stored.
	Size() int64
	// Open returns the layer blob's bytes (still compressed), verified
	// against Digest as they are read: io.EOF only after the whole blob
	// matched. The caller closes the reader.
	Open(ctx context.Context) (io.ReadCloser, error)
	// Authorize returns nil when the image's caller may be handed work that
	// someone else derived from this layer's content: the caller has proven
	// it may have the blob (for the fetcher: its repository is a proven
	// member for Digest, or Authorize has just read the whole blob from the
	// caller's own registry and it verified). Otherwise it returns the error
	// that stopped the proof, and the work must not be handed out.
	Authorize(ctx context.Context) error
}

// Prefetcher is a Layer that can be made local ahead of the read that
// needs it (fetcher.Layer is one): a materializer that reads an image's
// layers one after another starts the later layers' downloads early.
type Prefetcher interface {
	// Prefetch makes the layer blob local for its caller: once it returns
	// nil, a local tier holds the blob and Open serves it from there. It
	// returns at once when that is already so, waits for a download of the
	// blob under way, and otherwise downloads it into the tiers, as Open
	// would. It fails when that download fails or no local tier kept the
	// blob; a later Open is not affected (it reads the blob on its own).
	Prefetch(ctx context.Context) error
}
