package reapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/strata-oci/strata/blob"
)

// errBatchTooLarge: a batch request would exceed the server's limit.
var errBatchTooLarge = errors.New("batch request exceeds the server's max_batch_total_size_bytes")

// batchBlob is one blob of a batch upload.
type batchBlob struct {
	d    digest.Digest
	data []byte
}

// batchUpload sends blobs in one BatchUpdateBlobs request (zstd-compressed
// where enabled, the content is not compressed already, and the result is
// smaller), retried as a whole. A blob the server refuses
// fails the call with that blob's status. existing counts the blobs the
// server answered ALREADY_EXISTS for (it kept its copy).
func (t *Tier) batchUpload(ctx context.Context, caps *serverCaps, blobs []batchBlob) (existing int, err error) {
	req := &repb.BatchUpdateBlobsRequest{InstanceName: t.cfg.Instance, DigestFunction: repb.DigestFunction_SHA256}
	for _, b := range blobs {
		r := &repb.BatchUpdateBlobsRequest_Request{Digest: b.d.ToProto(), Data: b.data}
		if caps.zstdBatch && len(b.data) > 0 && compressible(b.data[:min(len(b.data), sniffLen)]) {
			if c := batchEncoder().EncodeAll(b.data, nil); len(c) < len(b.data) {
				r.Data, r.Compressor = c, repb.Compressor_ZSTD
			}
		}
		req.Requests = append(req.Requests, r)
	}
	if int64(proto.Size(req)) > caps.batchLimit {
		return 0, errBatchTooLarge
	}
	err = t.unary(ctx, func(ctx context.Context, o ...grpc.CallOption) error {
		resp, err := t.cas.BatchUpdateBlobs(ctx, req, o...)
		if err != nil {
			return err
		}
		ok := 0
		existing = 0
		for _, r := range resp.GetResponses() {
			c := codes.Code(r.GetStatus().GetCode())
			if c != codes.OK && c != codes.AlreadyExists {
				return status.ErrorProto(r.GetStatus())
			}
			if c == codes.AlreadyExists {
				existing++
			}
			ok++
		}
		if ok != len(req.Requests) {
			return status.Errorf(codes.Internal, "batch update answered %d of %d blobs", ok, len(req.Requests))
		}
		return nil
	})
	return existing, err
}

// readSmall reads a small blob with BatchReadBlobs and verifies it.
func (t *Tier) readSmall(ctx context.Context, d digest.Digest) ([]byte, error) {
	var data []byte
	err := t.unary(ctx, func(ctx context.Context, o ...grpc.CallOption) error {
		resp, err := t.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{
			InstanceName: t.cfg.Instance, Digests: []*repb.Digest{d.ToProto()}, DigestFunction: repb.DigestFunction_SHA256,
		}, o...)
		if err != nil {
			return err
		}
		for _, r := range resp.GetResponses() {
			if r.GetDigest().GetHash() != d.Hash || r.GetDigest().GetSizeBytes() != d.Size {
				continue
			}
			if c := codes.Code(r.GetStatus().GetCode()); c != codes.OK {
				return status.ErrorProto(r.GetStatus())
			}
			if r.GetCompressor() != repb.Compressor_IDENTITY {
				return status.Errorf(codes.Internal, "server sent %v data without being asked", r.GetCompressor())
			}
			data = r.GetData()
			return nil
		}
		return status.Errorf(codes.Internal, "batch read response does not answer for %s", d)
	})
	if err != nil {
		return nil, err
	}
	od, err := fromREAPI(d.Hash, d.Size)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := blob.Copy(&buf, bytes.NewReader(data), od, d.Size); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// getActionResult fetches an ActionCache entry; the error is unconverted
// (NotFound for a miss).
func (t *Tier) getActionResult(ctx context.Context, ad digest.Digest, inline []string) (*repb.ActionResult, error) {
	var res *repb.ActionResult
	err := t.unary(ctx, func(ctx context.Context, o ...grpc.CallOption) error {
		var err error
		res, err = t.ac.GetActionResult(ctx, &repb.GetActionResultRequest{
			InstanceName:      t.cfg.Instance,
			ActionDigest:      ad.ToProto(),
			InlineOutputFiles: inline,
			DigestFunction:    repb.DigestFunction_SHA256,
		}, o...)
		return err
	})
	return res, err
}

// writeAC writes an ActionCache entry the way strict servers require:
// first the blobs it needs (extra, then the key's Command and Action) in
// one batch, then UpdateActionResult. The caller has checked that every
// other blob res references is present.
func (t *Tier) writeAC(ctx context.Context, caps *serverCaps, ka keyAction, res *repb.ActionResult, extra []batchBlob) error {
	if !caps.acWritable {
		return fmt.Errorf("%w: the server does not allow ActionCache updates (update_enabled=false)", blob.ErrUnsupported)
	}
	blobs := append(extra,
		batchBlob{d: bytesDigest(ka.command), data: ka.command},
		batchBlob{d: ka.digest, data: ka.action})
	if _, err := t.batchUpload(ctx, caps, blobs); err != nil {
		return err
	}
	return t.unary(ctx, func(ctx context.Context, o ...grpc.CallOption) error {
		_, err := t.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{
			InstanceName:   t.cfg.Instance,
			ActionDigest:   ka.digest.ToProto(),
			ActionResult:   res,
			DigestFunction: repb.DigestFunction_SHA256,
		}, o...)
		return err
	})
}

// findOutput returns res's output file at path, or nil.
func findOutput(res *repb.ActionResult, path string) *repb.OutputFile {
	for _, f := range res.GetOutputFiles() {
		if f.GetPath() == path {
			return f
		}
	}
	return nil
}
