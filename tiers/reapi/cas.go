package reapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/strata-oci/strata/blob"
)

// Stat reports whether the server holds d. REAPI names a blob by hash and
// size, so Stat first needs d's size: from what this tier saw (Put, Open,
// refs) or else from the size index entry Strata writes with every Put
// (one GetActionResult). A blob whose size neither knows is reported as
// blob.ErrNotFound. Presence is then asked with FindMissingBlobs, unless d
// was seen present within ExistenceTTL.
func (t *Tier) Stat(ctx context.Context, d blob.Digest) (blob.Info, error) {
	if err := t.check(ctx, d); err != nil {
		return blob.Info{}, err
	}
	if t.isCorrupt(d) {
		return blob.Info{}, t.corruptMiss("stat", d)
	}
	size, err := t.sizeOf(ctx, d)
	if err != nil {
		return blob.Info{}, err
	}
	if t.knownPresent(d) {
		return t.info(d, size), nil
	}
	missing, err := t.findMissing(ctx, toREAPI(d, size))
	if err != nil {
		return blob.Info{}, t.convert(ctx, "stat", string(d), err)
	}
	if missing {
		t.exists.remove(d.Encoded())
		return blob.Info{}, fmt.Errorf("reapi %q: stat %s (%d bytes): %w", t.cfg.Name, d, size, blob.ErrNotFound)
	}
	t.markPresent(d)
	return t.info(d, size), nil
}

// check validates d and fails at once when ctx is done or the tier is
// closed, before any cache could answer.
func (t *Tier) check(ctx context.Context, d blob.Digest) error {
	if err := blob.ValidateDigest(d); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("reapi %q: %s: %w", t.cfg.Name, d, err)
	}
	if t.closed.Load() {
		return fmt.Errorf("reapi %q: %s: %w: %w", t.cfg.Name, d, blob.ErrUnavailable, errClosed)
	}
	return nil
}

func (t *Tier) info(d blob.Digest, size int64) blob.Info {
	return blob.Info{Digest: d, Size: size, Tier: t.cfg.Name}
}

// findMissing asks FindMissingBlobs about one digest.
func (t *Tier) findMissing(ctx context.Context, d digest.Digest) (bool, error) {
	var resp *repb.FindMissingBlobsResponse
	err := t.unary(ctx, func(ctx context.Context, o ...grpc.CallOption) error {
		var err error
		resp, err = t.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{
			InstanceName:   t.cfg.Instance,
			BlobDigests:    []*repb.Digest{d.ToProto()},
			DigestFunction: repb.DigestFunction_SHA256,
		}, o...)
		return err
	})
	if err != nil {
		return false, err
	}
	for _, m := range resp.GetMissingBlobDigests() {
		if m.GetHash() == d.Hash && m.GetSizeBytes() == d.Size {
			return true, nil
		}
	}
	return false, nil
}

// sizeOf returns d's size from the local map or the size index.
func (t *Tier) sizeOf(ctx context.Context, d blob.Digest) (int64, error) {
	if si, ok := t.sizes.get(d.Encoded()); ok {
		return si.size, nil
	}
	ka := sizeKeyAction(d)
	res, err := t.getActionResult(ctx, ka.digest, nil)
	if err != nil {
		if status.Code(err) == codes.NotFound {
			return 0, fmt.Errorf("reapi %q: %s: %w (size unknown: no Strata size index entry, so the REAPI digest cannot be formed)", t.cfg.Name, d, blob.ErrNotFound)
		}
		return 0, t.convert(ctx, "size lookup", string(d), err)
	}
	f := findOutput(res, blobOutput)
	if f == nil || f.GetDigest() == nil {
		return 0, fmt.Errorf("reapi %q: %s: %w: size index entry has no %q output", t.cfg.Name, d, blob.ErrNotFound, blobOutput)
	}
	got, err := fromREAPI(f.GetDigest().GetHash(), f.GetDigest().GetSizeBytes())
	if err != nil || got != d {
		return 0, fmt.Errorf("reapi %q: %s: %w: size index entry names another blob", t.cfg.Name, d, blob.ErrNotFound)
	}
	size := f.GetDigest().GetSizeBytes()
	t.learnSize(d, size, true)
	return size, nil
}

// Open streams d from the server with ByteStream Read (zstd compressed-blobs
// when enabled), decompressing as it goes and verifying digest and size:
// the reader fails at EOF with a *blob.MismatchError on corruption, after
// which the tier reports d missing until a Put re-uploads it (REAPI cannot
// delete the bad copy). The first message is awaited before Open returns,
// so a miss is reported by Open as blob.ErrNotFound; a stream that breaks
// later fails its Read with blob.ErrUnavailable. Nothing is buffered beyond
// one message. The caller must Close the reader.
func (t *Tier) Open(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	if err := t.check(ctx, d); err != nil {
		return nil, blob.Info{}, err
	}
	if t.isCorrupt(d) {
		return nil, blob.Info{}, t.corruptMiss("open", d)
	}
	size, err := t.sizeOf(ctx, d)
	if err != nil {
		return nil, blob.Info{}, err
	}
	caps, err := t.capabilities(ctx)
	if err != nil {
		return nil, blob.Info{}, err
	}
	rd := toREAPI(d, size)
	sr, err := t.openRead(ctx, readResource(t.cfg.Instance, rd, caps.zstdStream), string(d))
	if err != nil {
		if errors.Is(err, blob.ErrNotFound) {
			t.forget(d)
		}
		return nil, blob.Info{}, err
	}
	var src io.Reader = sr
	var dec *zstdReader
	if caps.zstdStream {
		dec, err = newZstdReader(sr, t.cfg.Name, d, func(error) { t.markCorrupt(d) })
		if err != nil {
			sr.Close()
			return nil, blob.Info{}, err
		}
		src = dec
	}
	v := blob.NewVerifier(src, d, size, func(error) { t.markCorrupt(d) })
	// A corrupt zstd stream surfaces through the verifier as the decoder's
	// ErrMismatch error.
	return &blobReader{v: v, sr: sr, dec: dec, onVerified: func() { t.markPresent(d) }}, t.info(d, size), nil
}

// blobReader is the reader Open returns: the verifier over the (possibly
// decompressed) stream. Close releases the stream and the decoder.
type blobReader struct {
	v          *blob.Verifier
	sr         *streamReader
	dec        *zstdReader
	onVerified func()
	reported   bool
}

// VerifiedBlob implements blob.VerifiedReader.
func (r *blobReader) VerifiedBlob() (blob.Digest, int64) { return r.v.VerifiedBlob() }

func (r *blobReader) Read(p []byte) (int, error) {
	n, err := r.v.Read(p)
	if err == io.EOF && !r.reported {
		r.reported = true
		r.onVerified()
	}
	return n, err
}

func (r *blobReader) Close() error {
	if r.dec != nil {
		r.dec.close()
	}
	return r.sr.Close()
}

// Put stores size bytes from r under d. It asks FindMissingBlobs first and
// returns at once, without reading r, when the server holds d and its size
// index entry is known to exist; when the server holds d but the index
// entry is not known, r is read and verified before the entry is written.
// Otherwise blobs that fit a batch request are read into memory, verified
// and sent with BatchUpdateBlobs; larger ones stream with ByteStream Write
// in chunks of at most 1 MiB, verified while they are read: the final
// request (finish_write) is sent only after the whole source matched d and
// size, so a mismatch aborts the upload and the server commits nothing.
// Put then writes d's size index entry (see docs/reapi.md).
func (t *Tier) Put(ctx context.Context, d blob.Digest, size int64, r io.Reader) error {
	if err := t.check(ctx, d); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("reapi %q: put %s: %w: negative size %d", t.cfg.Name, d, blob.ErrInvalidDigest, size)
	}
	si, known := t.sizes.get(d.Encoded())
	known = known && si.size == size
	rd := toREAPI(d, size)
	repair := t.isCorrupt(d) // upload even though the server has (bad) bytes
	present := known && t.knownPresent(d)
	if !present && !repair {
		missing, err := t.findMissing(ctx, rd)
		if err != nil {
			return t.convert(ctx, "put", string(d), err)
		}
		present = !missing
	}
	switch {
	case present && known && si.indexed:
		// Strata stored it before: nothing to do, r need not be read.
		return nil
	case present:
		// The CAS holds these bytes (the server verified them), but no
		// index entry is known to vouch for them (another client's blob,
		// or the empty blob every server has): check r is d before
		// writing one.
		if _, err := blob.Copy(io.Discard, r, d, size); err != nil {
			return fmt.Errorf("reapi %q: put %s: %w", t.cfg.Name, d, err)
		}
	default:
		caps, err := t.capabilities(ctx)
		if err != nil {
			return err
		}
		if size+batchOverhead+int64(len(t.cfg.Instance)) <= min(caps.batchLimit, maxBatchBlob) {
			err = t.putSmall(ctx, caps, d, size, r)
		} else {
			err = t.putStream(ctx, caps, d, size, blob.NewVerifier(r, d, size, nil))
		}
		if err != nil {
			return err
		}
		t.corrupt.remove(d.Encoded())
	}
	t.markPresent(d)
	t.learnSize(d, size, false)
	return t.ensureIndexed(ctx, d, size)
}

// putSmall reads and verifies the whole blob, then sends it in one
// BatchUpdateBlobs request (or, if compression made it no smaller and it
// does not fit after all, through ByteStream).
func (t *Tier) putSmall(ctx context.Context, caps *serverCaps, d blob.Digest, size int64, r io.Reader) error {
	var buf bytes.Buffer
	buf.Grow(int(size))
	if _, err := blob.Copy(&buf, r, d, size); err != nil {
		return fmt.Errorf("reapi %q: put %s: %w", t.cfg.Name, d, err)
	}
	err := t.batchUpload(ctx, caps, []batchBlob{{d: toREAPI(d, size), data: buf.Bytes()}})
	if errors.Is(err, errBatchTooLarge) {
		return t.putStream(ctx, caps, d, size, bytes.NewReader(buf.Bytes()))
	}
	if err != nil {
		return t.convert(ctx, "put", string(d), err)
	}
	return nil
}

// ensureIndexed writes d's size index entry unless it is known to exist.
func (t *Tier) ensureIndexed(ctx context.Context, d blob.Digest, size int64) error {
	if si, ok := t.sizes.get(d.Encoded()); ok && si.indexed && si.size == size {
		return nil
	}
	caps, err := t.capabilities(ctx)
	if err != nil {
		return err
	}
	if !caps.acWritable {
		return nil // the server forbids ActionCache updates; see docs/reapi.md
	}
	ka := sizeKeyAction(d)
	res := &repb.ActionResult{
		OutputFiles:       []*repb.OutputFile{{Path: blobOutput, Digest: toREAPI(d, size).ToProto()}},
		ExecutionMetadata: &repb.ExecutedActionMetadata{Worker: worker},
	}
	if err := t.writeAC(ctx, caps, ka, res, nil); err != nil {
		return t.convert(ctx, "put size index", string(d), err)
	}
	t.learnSize(d, size, true)
	return nil
}
