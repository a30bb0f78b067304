package reapi

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc"

	bspb "google.golang.org/genproto/googleapis/bytestream"
)

// frameHeaders records the zstd frame header that starts each
// compressed-blobs upload a server receives.
type frameHeaders struct {
	mu      sync.Mutex
	headers []zstd.Header
	errs    []error
}

func (f *frameHeaders) interceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if info.FullMethod != "/google.bytestream.ByteStream/Write" {
			return h(srv, ss)
		}
		return h(srv, &headerStream{ServerStream: ss, f: f})
	}
}

// all returns the headers recorded so far and the errors decoding them.
func (f *frameHeaders) all() ([]zstd.Header, []error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]zstd.Header(nil), f.headers...), append([]error(nil), f.errs...)
}

type headerStream struct {
	grpc.ServerStream
	f *frameHeaders
}

func (s *headerStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	// Only the first request of an upload names the resource.
	r, ok := m.(*bspb.WriteRequest)
	if err != nil || !ok || !strings.Contains(r.GetResourceName(), "/compressed-blobs/zstd/") {
		return err
	}
	var h zstd.Header
	herr := h.Decode(r.GetData())
	s.f.mu.Lock()
	s.f.headers = append(s.f.headers, h)
	s.f.errs = append(s.f.errs, herr)
	s.f.mu.Unlock()
	return err
}

// TestStreamUploadFrameContentSize: a compressed ByteStream upload declares
// the blob's uncompressed size in its zstd frame header
// (Frame_Content_Size), so a server that decodes the upload whole
// allocates its buffer once instead of growing it (the SDK fake took
// 16 s, past a 5 s StallTimeout, for a 578 MB image without it).
func TestStreamUploadFrameContentSize(t *testing.T) {
	var rec frameHeaders
	f := startFake(t, fakeOptions{zstd: true, stream: []grpc.StreamServerInterceptor{rec.interceptor()}})
	tier := newTier(t, f, nil)
	// Above the batch limit (4 MiB less 1 KiB, see maxBatchBlob), so Put
	// streams it; text, so it goes as zstd.
	const line = "strata layer text, compressible and streamed\n"
	data := bytes.Repeat([]byte(line), (6<<20)/len(line))
	if int64(len(data)) <= maxBatchBlob {
		t.Fatalf("blob of %d bytes would be batched (limit %d)", len(data), maxBatchBlob)
	}
	d := put(t, tier, data)

	headers, errs := rec.all()
	if len(headers) != 1 {
		t.Fatalf("server saw %d compressed-blobs uploads, want 1", len(headers))
	}
	if errs[0] != nil {
		t.Fatalf("decoding the zstd frame header of the first WriteRequest: %v", errs[0])
	}
	if h := headers[0]; !h.HasFCS || h.FrameContentSize != uint64(len(data)) {
		t.Errorf("frame header: HasFCS=%v FrameContentSize=%d, want true and %d", h.HasFCS, h.FrameContentSize, len(data))
	}

	// The server decoded and took the upload.
	rc, _, err := tier.Open(context.Background(), d)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer rc.Close()
	var got bytes.Buffer
	if _, err := got.ReadFrom(rc); err != nil {
		t.Fatalf("read back: %v", err)
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Errorf("read back %d bytes, not the %d put", got.Len(), len(data))
	}
}
