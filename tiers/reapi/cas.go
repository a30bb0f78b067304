package reapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

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

// Open streams d from the server with ByteStream Read, decompressing as it
// goes and verifying digest and size: the reader fails at EOF with a
// *blob.MismatchError on corruption (also for a zstd stream that does not
// decode), after which the tier reports d missing until a Put re-uploads it
// (REAPI cannot delete the bad copy). The first message is awaited (at most
// CallTimeout) before Open returns, so a miss is reported by Open as
// blob.ErrNotFound.
//
// Where zstd is on, a blob whose content compresses is read from
// compressed-blobs/zstd, other blobs as identity; a blob the tier knows
// nothing of is read as identity and moved to zstd after the first message
// when its first bytes are not those of compressed content. A blob of at
// least Parallel.Threshold bytes read as identity is read in parts over
// several streams (see ParallelConfig) and delivered in order.
//
// A stream that breaks is resumed at the offset already delivered
// (Retries.MaxResumes per stream); a part read ahead that fails or stalls
// is read again from where it stopped when the caller reaches it. A Read
// fails with blob.ErrUnavailable when that does not work, or when the
// stream the caller waits on made no progress for StallTimeout. Nothing is
// buffered beyond one message, except the parts read ahead (bounded by
// Parallel.Memory for the whole tier). The caller must Close the reader.
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
	markCorrupt := func(error) { t.markCorrupt(d) }
	enc := t.readEncodingOf(caps, d.Encoded())
	pc := t.cfg.Parallel
	parallel := enc != readZstd && pc.enabled() && size >= pc.Threshold && size > pc.PartSize
	rr := &resumingReader{t: t, ctx: ctx, d: d, size: size, zstd: enc == readZstd, onCorrupt: markCorrupt, end: size}
	if parallel {
		rr.ranged, rr.end = true, pc.PartSize
	}
	if err := rr.open(); err != nil {
		if errors.Is(err, blob.ErrNotFound) {
			t.forget(d)
		}
		return nil, blob.Info{}, err
	}
	if enc == readSniff {
		head := rr.head()
		if len(head) >= sniffLen || int64(len(head)) == size {
			c := compressible(head[:min(len(head), sniffLen)])
			t.kinds.put(d.Encoded(), c)
			if c && size-int64(len(head)) >= minSwitch {
				// Go on with zstd after this message: one stream.
				rr.toZstd, rr.ranged, rr.end, parallel = true, false, size, false
			}
		}
	}
	var src io.Reader = rr
	closeSrc := rr.close
	if parallel {
		pr := t.newParallelReader(ctx, d, size, rr, markCorrupt)
		src, closeSrc = pr, func() { pr.Close() }
	}
	v := blob.NewVerifier(src, d, size, markCorrupt)
	return &blobReader{v: v, close: closeSrc, onVerified: func() { t.markPresent(d) }}, t.info(d, size), nil
}

// blobReader is the reader Open returns: the verifier over the (possibly
// decompressed, resumed or parallel) stream. Close releases the streams.
type blobReader struct {
	v          *blob.Verifier
	close      func()
	closeOnce  sync.Once
	onVerified func()
	reported   bool
}

// VerifiedBlob implements blob.VerifiedReader.
func (r *blobReader) VerifiedBlob() (blob.Digest, int64) { return r.v.VerifiedBlob() }

// PrefixState implements blob.PrefixHasher (Read passes the verifier's
// bytes through unchanged).
func (r *blobReader) PrefixState() (hash.Hash, int64) { return r.v.PrefixState() }

func (r *blobReader) Read(p []byte) (int, error) {
	n, err := r.v.Read(p)
	if err == io.EOF && !r.reported {
		r.reported = true
		r.onVerified()
	}
	return n, err
}

// Close releases the streams; it is safe to call more than once.
func (r *blobReader) Close() error {
	r.closeOnce.Do(r.close)
	return nil
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
//
// After this tier read corrupt bytes for d, Put uploads d whatever
// FindMissingBlobs says, as Repair does, and returns nil even when the
// server kept its copy (this tier then keeps reporting d missing).
func (t *Tier) Put(ctx context.Context, d blob.Digest, size int64, r io.Reader) error {
	_, err := t.put(ctx, d, size, r, false)
	return err
}

// Repair uploads size bytes from r over the server's copy of d, which the
// caller found corrupt (or this tier did): unlike Put it never skips the
// upload because FindMissingBlobs says present, and it verifies r exactly
// as Put does. Whether the server replaces a stored blob is the server's
// choice (docs/reapi.md lists what bazel-remote, Buildbarn, BuildBuddy and
// NativeLink do). When the server says it kept its copy, Repair returns an
// error wrapping blob.ErrUnsupported and the tier keeps reporting d
// missing, so it does not serve the bad copy again; the stack's bytes came
// from elsewhere and are unaffected.
func (t *Tier) Repair(ctx context.Context, d blob.Digest, size int64, r io.Reader) error {
	kept, err := t.put(ctx, d, size, r, true)
	if err != nil {
		return err
	}
	if kept {
		return fmt.Errorf("reapi %q: repair %s: %w: the server kept its stored copy (it skips uploads of blobs it holds)", t.cfg.Name, d, blob.ErrUnsupported)
	}
	return nil
}

// put is Put, forced to upload when force is set; kept reports that the
// server kept a copy it already held instead of taking the upload.
func (t *Tier) put(ctx context.Context, d blob.Digest, size int64, r io.Reader, force bool) (kept bool, err error) {
	if err := t.check(ctx, d); err != nil {
		return false, err
	}
	if size < 0 {
		return false, fmt.Errorf("reapi %q: put %s: %w: negative size %d", t.cfg.Name, d, blob.ErrInvalidDigest, size)
	}
	if force {
		t.markCorrupt(d) // until the upload is taken, the server's copy is suspect
	}
	si, known := t.sizes.get(d.Encoded())
	known = known && si.size == size
	rd := toREAPI(d, size)
	repair := t.isCorrupt(d) // upload even though the server has (bad) bytes
	present := known && t.knownPresent(d)
	if !present && !repair {
		missing, err := t.findMissing(ctx, rd)
		if err != nil {
			return false, t.convert(ctx, "put", string(d), err)
		}
		present = !missing
	}
	switch {
	case present && known && si.indexed:
		// Strata stored it before: nothing to do, r need not be read.
		return false, nil
	case present:
		// The CAS holds these bytes (the server verified them), but no
		// index entry is known to vouch for them (another client's blob,
		// or the empty blob every server has): check r is d before
		// writing one.
		if _, err := blob.Copy(io.Discard, r, d, size); err != nil {
			return false, fmt.Errorf("reapi %q: put %s: %w", t.cfg.Name, d, err)
		}
	default:
		caps, err := t.capabilities(ctx)
		if err != nil {
			return false, err
		}
		// size is a claim that may be near MaxInt64: compare it with what
		// is left of the batch limit instead of adding to it.
		if size <= min(caps.batchLimit, maxBatchBlob)-batchOverhead-int64(len(t.cfg.Instance)) {
			kept, err = t.putSmall(ctx, caps, d, size, r)
		} else {
			kept, err = t.putStream(ctx, caps, d, size, blob.NewVerifier(r, d, size, nil))
		}
		if err != nil {
			return false, err
		}
		if repair && kept {
			// The server kept the copy that read corrupt: keep skipping it.
			t.repairsRefused.Add(1)
		} else {
			t.corrupt.remove(d.Encoded())
		}
	}
	t.markPresent(d)
	t.learnSize(d, size, false)
	return repair && kept, t.ensureIndexed(ctx, d, size)
}

// putSmall reads and verifies the whole blob, then sends it in one
// BatchUpdateBlobs request (or, if compression made it no smaller and it
// does not fit after all, through ByteStream). kept reports that the
// server answered that it holds the blob already.
func (t *Tier) putSmall(ctx context.Context, caps *serverCaps, d blob.Digest, size int64, r io.Reader) (kept bool, err error) {
	var buf bytes.Buffer
	buf.Grow(int(size))
	if _, err := blob.Copy(&buf, r, d, size); err != nil {
		return false, fmt.Errorf("reapi %q: put %s: %w", t.cfg.Name, d, err)
	}
	t.kinds.put(d.Encoded(), compressible(buf.Bytes()[:min(buf.Len(), sniffLen)]))
	existing, err := t.batchUpload(ctx, caps, []batchBlob{{d: toREAPI(d, size), data: buf.Bytes()}})
	if errors.Is(err, errBatchTooLarge) {
		return t.putStream(ctx, caps, d, size, bytes.NewReader(buf.Bytes()))
	}
	if err != nil {
		return false, t.convert(ctx, "put", string(d), err)
	}
	return existing > 0, nil
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
