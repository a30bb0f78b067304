package reapitest

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"sync"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"github.com/bazelbuild/remote-apis-sdks/go/pkg/fakes"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/klauspost/compress/zstd"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// casService is the fake's CAS and ByteStream with a Read that honours
// read_offset as the REAPI specifies (the SDK fake's does not, and applies
// it to compressed bytes), lost blobs, and KeepExisting writes.
type casService struct {
	*fakes.CAS
	s *Server

	mu      sync.Mutex
	lost    map[string]bool
	offsets map[string][]int64
	zstd    map[string][]byte // Options.StoredZstd: a blob's zstd form, by hash
}

func newCASService(s *Server) *casService {
	return &casService{CAS: s.CAS, s: s, lost: map[string]bool{}, offsets: map[string][]int64{}, zstd: map[string][]byte{}}
}

// compress returns the zstd form of data, the whole blob d when whole:
// from Options.StoredZstd's store when it holds it.
func (c *casService) compress(d digest.Digest, data []byte, whole bool) []byte {
	if !c.s.o.StoredZstd || !whole {
		return encoder.EncodeAll(data, nil)
	}
	c.mu.Lock()
	z, ok := c.zstd[d.Hash]
	c.mu.Unlock()
	if !ok {
		z = encoder.EncodeAll(data, nil)
		c.mu.Lock()
		c.zstd[d.Hash] = z
		c.mu.Unlock()
	}
	return z
}

var encoder = func() *zstd.Encoder {
	e, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		panic(err)
	}
	return e
}()

func (c *casService) lose(hash string) {
	c.mu.Lock()
	c.lost[hash] = true
	delete(c.zstd, hash)
	c.mu.Unlock()
}

func (c *casService) found(hash string) {
	c.mu.Lock()
	delete(c.lost, hash)
	delete(c.zstd, hash) // written again: compress what is stored now
	c.mu.Unlock()
}

func (c *casService) isLost(hash string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lost[hash]
}

// get returns a stored blob unless it was lost.
func (c *casService) get(d digest.Digest) ([]byte, bool) {
	if c.isLost(d.Hash) {
		return nil, false
	}
	return c.CAS.Get(d)
}

func (c *casService) readOffsets(hash string) []int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int64(nil), c.offsets[hash]...)
}

// resource is a parsed ByteStream resource name.
type resource struct {
	d          digest.Digest
	compressed bool
}

// parseResource parses "instance/[uploads/{uuid}/](blobs|compressed-blobs/zstd)/{hash}/{size}".
func parseResource(name string, upload bool) (resource, error) {
	bad := status.Errorf(codes.InvalidArgument, "fake: malformed resource name %q", name)
	p := strings.Split(name, "/")
	if len(p) < 1 || p[0] != Instance {
		return resource{}, status.Errorf(codes.InvalidArgument, "fake serves instance %q: resource name %q", Instance, name)
	}
	p = p[1:]
	if upload {
		if len(p) < 2 || p[0] != "uploads" {
			return resource{}, bad
		}
		p = p[2:]
	}
	var r resource
	switch {
	case len(p) == 3 && p[0] == "blobs":
		p = p[1:]
	case len(p) == 4 && p[0] == "compressed-blobs" && p[1] == "zstd":
		r.compressed = true
		p = p[2:]
	default:
		return resource{}, bad
	}
	size, err := strconv.ParseInt(p[1], 10, 64)
	if err != nil {
		return resource{}, bad
	}
	if r.d, err = digest.New(p[0], size); err != nil {
		return resource{}, bad
	}
	return r, nil
}

// Read serves blob[read_offset:] (read_offset counts uncompressed bytes,
// also for compressed-blobs, which compress the rest of the blob), in
// messages of at most ChunkSize bytes.
func (c *casService) Read(req *bspb.ReadRequest, stream bsgrpc.ByteStream_ReadServer) error {
	r, err := parseResource(req.GetResourceName(), false)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.offsets[r.d.Hash] = append(c.offsets[r.d.Hash], req.GetReadOffset())
	c.mu.Unlock()
	off, limit := req.GetReadOffset(), req.GetReadLimit()
	switch {
	case off < 0 || off > r.d.Size:
		return status.Errorf(codes.OutOfRange, "fake: read_offset %d outside a blob of %d bytes", off, r.d.Size)
	case limit < 0, r.compressed && limit != 0:
		return status.Errorf(codes.InvalidArgument, "fake: read_limit %d not allowed here", limit)
	}
	data, ok := c.get(r.d)
	if !ok {
		return status.Errorf(codes.NotFound, "fake: blob %s not found", r.d)
	}
	whole := off == 0 && limit == 0
	data = data[off:]
	if limit > 0 && limit < int64(len(data)) {
		data = data[:limit]
	}
	if r.compressed {
		data = c.compress(r.d, data, whole)
	}
	for len(data) > 0 {
		n := min(len(data), c.s.o.ChunkSize)
		if err := stream.Send(&bspb.ReadResponse{Data: data[:n]}); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// Write passes the upload to the fake, except that with KeepExisting a
// blob the CAS holds ends the upload at once. A completed upload brings a
// lost blob back.
func (c *casService) Write(stream bsgrpc.ByteStream_WriteServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	r, err := parseResource(first.GetResourceName(), true)
	if err != nil {
		return err
	}
	if _, ok := c.get(r.d); ok && c.s.o.KeepExisting {
		committed := r.d.Size
		if r.compressed {
			committed = -1
		}
		return stream.SendAndClose(&bspb.WriteResponse{CommittedSize: committed})
	}
	rs := &replayStream{ByteStream_WriteServer: stream, first: first}
	if r.compressed && c.s.o.StoredZstd {
		rs.keep = new(bytes.Buffer)
	}
	if err := c.CAS.Write(rs); err != nil {
		return err
	}
	c.found(r.d.Hash)
	if rs.keep != nil { // the fake verified it: its zstd form as uploaded
		c.mu.Lock()
		c.zstd[r.d.Hash] = rs.keep.Bytes()
		c.mu.Unlock()
	}
	return nil
}

// replayStream hands the fake the first request again, and keeps the
// data it passes on when keep is set.
type replayStream struct {
	bsgrpc.ByteStream_WriteServer
	first *bspb.WriteRequest
	keep  *bytes.Buffer
}

func (r *replayStream) Recv() (*bspb.WriteRequest, error) {
	req := r.first
	if req != nil {
		r.first = nil
	} else {
		var err error
		if req, err = r.ByteStream_WriteServer.Recv(); err != nil {
			return nil, err
		}
	}
	if r.keep != nil {
		r.keep.Write(req.GetData())
	}
	return req, nil
}

// FindMissingBlobs also reports lost blobs missing.
func (c *casService) FindMissingBlobs(ctx context.Context, req *repb.FindMissingBlobsRequest) (*repb.FindMissingBlobsResponse, error) {
	resp, err := c.CAS.FindMissingBlobs(ctx, req)
	if err != nil {
		return nil, err
	}
	missing := map[string]bool{}
	for _, m := range resp.GetMissingBlobDigests() {
		missing[m.GetHash()] = true
	}
	for _, d := range req.GetBlobDigests() {
		if c.isLost(d.GetHash()) && !missing[d.GetHash()] {
			resp.MissingBlobDigests = append(resp.MissingBlobDigests, d)
		}
	}
	return resp, nil
}

// BatchReadBlobs reports lost blobs as NOT_FOUND.
func (c *casService) BatchReadBlobs(ctx context.Context, req *repb.BatchReadBlobsRequest) (*repb.BatchReadBlobsResponse, error) {
	resp, err := c.CAS.BatchReadBlobs(ctx, req)
	if err != nil {
		return nil, err
	}
	for _, r := range resp.GetResponses() {
		if c.isLost(r.GetDigest().GetHash()) {
			r.Data = nil
			r.Status = status.New(codes.NotFound, "fake: blob lost").Proto()
		}
	}
	return resp, nil
}

// BatchUpdateBlobs brings lost blobs back when they are stored again.
func (c *casService) BatchUpdateBlobs(ctx context.Context, req *repb.BatchUpdateBlobsRequest) (*repb.BatchUpdateBlobsResponse, error) {
	resp, err := c.CAS.BatchUpdateBlobs(ctx, req)
	if err != nil {
		return nil, err
	}
	for _, r := range resp.GetResponses() {
		if codes.Code(r.GetStatus().GetCode()) == codes.OK {
			c.found(r.GetDigest().GetHash())
		}
	}
	return resp, nil
}

// actionCache is the fake ActionCache, made strict by Options.Strict.
type actionCache struct {
	*fakes.ActionCache
	s *Server
}

// outputs returns the CAS digests res names.
func outputs(res *repb.ActionResult) []digest.Digest {
	var ds []digest.Digest
	for _, f := range res.GetOutputFiles() {
		ds = append(ds, digest.NewFromProtoUnvalidated(f.GetDigest()))
	}
	return ds
}

func (a *actionCache) missingOutput(res *repb.ActionResult) (digest.Digest, bool) {
	for _, d := range outputs(res) {
		if _, ok := a.s.cas.get(d); !ok {
			return d, true
		}
	}
	return digest.Digest{}, false
}

func (a *actionCache) UpdateActionResult(ctx context.Context, req *repb.UpdateActionResultRequest) (*repb.ActionResult, error) {
	if a.s.o.Strict {
		if req.InstanceName != Instance {
			return nil, status.Errorf(codes.InvalidArgument, "fake serves instance %q, not %q", Instance, req.InstanceName)
		}
		if d, missing := a.missingOutput(req.GetActionResult()); missing {
			return nil, status.Errorf(codes.FailedPrecondition, "fake: output %s is not in the CAS", d)
		}
	}
	return a.ActionCache.UpdateActionResult(ctx, req)
}

func (a *actionCache) GetActionResult(ctx context.Context, req *repb.GetActionResultRequest) (*repb.ActionResult, error) {
	if a.s.o.Strict && req.InstanceName != Instance {
		return nil, status.Errorf(codes.InvalidArgument, "fake serves instance %q, not %q", Instance, req.InstanceName)
	}
	res, err := a.ActionCache.GetActionResult(ctx, req)
	if err != nil {
		return nil, err
	}
	if _, missing := a.missingOutput(res); missing && a.s.o.Strict {
		return nil, status.Error(codes.NotFound, "fake: entry references evicted blobs")
	}
	return res, nil
}
