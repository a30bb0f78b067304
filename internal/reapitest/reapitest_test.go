package reapitest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/klauspost/compress/zstd"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

type client struct {
	bs  bspb.ByteStreamClient
	cas repb.ContentAddressableStorageClient
	ac  repb.ActionCacheClient
}

func dial(t *testing.T, s *Server) client {
	t.Helper()
	conn, err := grpc.NewClient(s.Endpoint()[len("grpc://"):], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return client{bspb.NewByteStreamClient(conn), repb.NewContentAddressableStorageClient(conn), repb.NewActionCacheClient(conn)}
}

func randomBlob(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func resourceOf(d digest.Digest, compressed bool) string {
	if compressed {
		return Instance + "/compressed-blobs/zstd/" + d.Hash + "/" + strconv.FormatInt(d.Size, 10)
	}
	return Instance + "/blobs/" + d.Hash + "/" + strconv.FormatInt(d.Size, 10)
}

// readAll reads a resource and returns what arrived before the stream ended
// and how it ended (nil for a clean end).
func readAll(ctx context.Context, c client, res string, off int64) ([]byte, error) {
	stream, err := c.bs.Read(ctx, &bspb.ReadRequest{ResourceName: res, ReadOffset: off})
	if err != nil {
		return nil, err
	}
	var got []byte
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		got = append(got, m.GetData()...)
	}
}

func unzstd(t *testing.T, b []byte) []byte {
	t.Helper()
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	out, err := dec.DecodeAll(b, nil)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return out
}

// TestReadOffset: read_offset counts uncompressed bytes, for identity and
// compressed reads, and every offset is recorded.
func TestReadOffset(t *testing.T) {
	s := NewServer(t, Options{Zstd: true, ChunkSize: 1000})
	c := dial(t, s)
	data := randomBlob(1, 5000)
	d := s.CAS.Put(data)
	for _, tt := range []struct {
		desc       string
		off        int64
		compressed bool
		wantCode   codes.Code
	}{
		{"from the start", 0, false, codes.OK},
		{"mid-chunk", 1234, false, codes.OK},
		{"at the end", 5000, false, codes.OK},
		{"past the end", 5001, false, codes.OutOfRange},
		{"compressed, mid-blob", 2500, true, codes.OK},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			got, err := readAll(context.Background(), c, resourceOf(d, tt.compressed), tt.off)
			if status.Code(err) != tt.wantCode {
				t.Fatalf("read = %v, want %v", err, tt.wantCode)
			}
			if err != nil {
				return
			}
			if tt.compressed {
				got = unzstd(t, got)
			}
			if !bytes.Equal(got, data[tt.off:]) {
				t.Fatalf("read at %d: %d bytes, not the blob's tail", tt.off, len(got))
			}
		})
	}
	if got := s.ReadOffsets(d.Hash); len(got) != 5 || got[1] != 1234 || got[4] != 2500 {
		t.Fatalf("ReadOffsets = %v", got)
	}
}

// TestReadFaults: each stream fault acts at its byte offset, only on the
// blob it names, only as often as asked.
func TestReadFaults(t *testing.T) {
	data := randomBlob(2, 10000)
	other := randomBlob(3, 10000)
	tests := []struct {
		desc     string
		f        Fault
		wantN    int // bytes that arrive (Drop: at most; bytes in flight are lost)
		wantCode codes.Code
		flipAt   int // -1: no flip
	}{
		{"abort after 3000 bytes", Fault{Action: Abort, AfterBytes: 3000}, 3000, codes.Unavailable, -1},
		{"abort with resource exhausted", Fault{Action: Abort, AfterBytes: 10, Code: codes.ResourceExhausted}, 10, codes.ResourceExhausted, -1},
		{"drop the connection after 4500 bytes", Fault{Action: Drop, AfterBytes: 4500}, 4500, codes.Unavailable, -1},
		{"fail before anything", Fault{Action: Fail, Code: codes.Internal}, 0, codes.Internal, -1},
		{"flip byte 7777", Fault{Action: Flip, AfterBytes: 7777}, 10000, codes.OK, 7777},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			s := NewServer(t, Options{ChunkSize: 1000})
			c := dial(t, s)
			d, od := s.CAS.Put(data), s.CAS.Put(other)
			f := tt.f
			f.Call, f.Hash, f.Times = Read, d.Hash, 1
			in := s.Inject(f)
			// Another blob is untouched.
			if got, err := readAll(context.Background(), c, resourceOf(od, false), 0); err != nil || !bytes.Equal(got, other) {
				t.Fatalf("read of another blob = %d bytes, %v", len(got), err)
			}
			got, err := readAll(context.Background(), c, resourceOf(d, false), 0)
			if status.Code(err) != tt.wantCode || len(got) > tt.wantN || (len(got) < tt.wantN && f.Action != Drop) {
				t.Fatalf("faulted read = %d bytes, %v; want %d bytes, %v", len(got), err, tt.wantN, tt.wantCode)
			}
			want := bytes.Clone(data[:len(got)])
			if tt.flipAt >= 0 {
				want[tt.flipAt] ^= 0xff
			}
			if !bytes.Equal(got, want) {
				t.Fatal("the bytes before the fault differ from the blob's")
			}
			// Times: the next read is clean.
			if got, err := readAll(context.Background(), c, resourceOf(d, false), 0); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read after the fault = %d bytes, %v", len(got), err)
			}
			if in.Hits() != 1 {
				t.Fatalf("Hits = %d, want 1", in.Hits())
			}
		})
	}
}

// TestStall: a stalled read delivers its first bytes, then nothing until
// released (or until the client gives up).
func TestStall(t *testing.T) {
	s := NewServer(t, Options{ChunkSize: 1000})
	c := dial(t, s)
	data := randomBlob(4, 5000)
	d := s.CAS.Put(data)
	in := s.Inject(Fault{Call: Read, Action: Stall, AfterBytes: 1500, Hash: d.Hash})

	var released atomic.Bool
	type result struct {
		got          []byte
		err          error
		afterRelease bool
	}
	done := make(chan result, 1)
	go func() {
		got, err := readAll(context.Background(), c, resourceOf(d, false), 0)
		done <- result{got, err, released.Load()}
	}()
	time.Sleep(50 * time.Millisecond) // give a broken stall the chance to let the read finish early
	released.Store(true)
	in.Release()
	r := <-done
	if r.err != nil || !bytes.Equal(r.got, data) || !r.afterRelease {
		t.Fatalf("stalled read = %d bytes, %v, ended after release: %v", len(r.got), r.err, r.afterRelease)
	}

	// A stall nobody releases ends when the client gives up, after the
	// bytes before the stall.
	in.Remove()
	s.Inject(Fault{Call: Read, Action: Stall, AfterBytes: 1500, Hash: d.Hash})
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := c.bs.Read(ctx, &bspb.ReadRequest{ResourceName: resourceOf(d, false)})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for n < 1500 {
		m, err := stream.Recv()
		if err != nil {
			t.Fatalf("after %d bytes: %v", n, err)
		}
		n += len(m.GetData())
	}
	if n != 1500 {
		t.Fatalf("%d bytes before the stall, want 1500", n)
	}
	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("Recv after cancel = %v", err)
	}
}

// TestUnaryFaults: Fail, Flip on BatchReadBlobs, Times.
func TestUnaryFaults(t *testing.T) {
	s := NewServer(t, Options{})
	c := dial(t, s)
	ctx := context.Background()
	data := []byte("small blob")
	d := s.CAS.Put(data)
	s.Inject(Fault{Call: FindMissing, Action: Fail, Code: codes.ResourceExhausted, Times: 2})
	for i, want := range []codes.Code{codes.ResourceExhausted, codes.ResourceExhausted, codes.OK} {
		_, err := c.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{InstanceName: Instance, BlobDigests: []*repb.Digest{d.ToProto()}})
		if status.Code(err) != want {
			t.Fatalf("call %d: %v, want %v", i, err, want)
		}
	}
	if s.Calls(FindMissing) != 3 {
		t.Fatalf("Calls(FindMissing) = %d", s.Calls(FindMissing))
	}
	s.Inject(Fault{Call: BatchRead, Action: Flip, AfterBytes: 3, Hash: d.Hash})
	resp, err := c.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{InstanceName: Instance, Digests: []*repb.Digest{d.ToProto()}})
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(data)
	want[3] ^= 0xff
	if got := resp.GetResponses()[0].GetData(); !bytes.Equal(got, want) {
		t.Fatalf("flipped batch read = %q, want %q", got, want)
	}
	if stored, _ := s.CAS.Get(d); !bytes.Equal(stored, data) {
		t.Fatal("Flip changed the stored blob")
	}
}

// TestLoseOutputs: reading an ActionCache entry loses the blob it names;
// a strict ActionCache then drops the entry; an upload brings the blob back.
func TestLoseOutputs(t *testing.T) {
	s := NewServer(t, Options{Strict: true})
	c := dial(t, s)
	ctx := context.Background()
	data := randomBlob(5, 3000)
	d := s.CAS.Put(data)
	ad := s.CAS.Put([]byte("an action"))
	res := &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "blob", Digest: d.ToProto()}}}
	if _, err := c.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{InstanceName: Instance, ActionDigest: ad.ToProto(), ActionResult: res}); err != nil {
		t.Fatal(err)
	}
	in := s.Inject(Fault{Call: GetActionResult, Action: LoseOutputs, Hash: d.Hash, Times: 1})
	_, err := c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{InstanceName: Instance, ActionDigest: ad.ToProto()})
	if status.Code(err) != codes.NotFound || in.Hits() != 1 {
		t.Fatalf("strict GetActionResult after the loss = %v (hits %d), want NotFound", err, in.Hits())
	}
	if _, err := readAll(ctx, c, resourceOf(d, false), 0); status.Code(err) != codes.NotFound {
		t.Fatalf("read of a lost blob = %v", err)
	}
	fm, err := c.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{InstanceName: Instance, BlobDigests: []*repb.Digest{d.ToProto()}})
	if err != nil || len(fm.GetMissingBlobDigests()) != 1 {
		t.Fatalf("FindMissingBlobs of a lost blob = %v, %v", fm, err)
	}
	if _, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{InstanceName: Instance,
		Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: d.ToProto(), Data: data}}}); err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(ctx, c, resourceOf(d, false), 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after re-upload = %d bytes, %v", len(got), err)
	}
}

// TestKeepExisting: a ByteStream upload of a stored blob ends at once and
// does not replace it.
func TestKeepExisting(t *testing.T) {
	s := NewServer(t, Options{KeepExisting: true})
	c := dial(t, s)
	data := randomBlob(6, 3000)
	d := s.CAS.Put(data)
	w, err := c.bs.Write(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	res := Instance + "/uploads/5b4d3f5e-8c0f-4c55-9e51-0a5a3bb1a001/blobs/" + d.Hash + "/" + strconv.FormatInt(d.Size, 10)
	if err := w.Send(&bspb.WriteRequest{ResourceName: res, Data: data[:100]}); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	resp, err := w.CloseAndRecv()
	if err != nil || resp.GetCommittedSize() != d.Size {
		t.Fatalf("upload of a stored blob = %v, %v; want committed_size %d", resp, err, d.Size)
	}
	if s.CAS.BlobWrites(d) != 0 {
		t.Fatal("the fake stored the blob again")
	}
}

// TestStoredZstdServesTheSameBlob: with StoredZstd a blob read whole as
// compressed-blobs is served from its kept zstd form, which decodes to the
// blob, read after read; a read from an offset still gets the rest.
func TestStoredZstdServesTheSameBlob(t *testing.T) {
	s := NewServer(t, Options{Zstd: true, StoredZstd: true})
	data := bytes.Repeat([]byte("stored zstd form of a blob, "), 40000)
	d := s.CAS.Put(data)
	c := dial(t, s)
	bs := c.bs
	read := func(off int64) []byte {
		t.Helper()
		z, err := readAll(context.Background(), c, resourceOf(d, true), off)
		if err != nil {
			t.Fatal(err)
		}
		return unzstd(t, z)
	}
	for i := 0; i < 3; i++ {
		if got := read(0); !bytes.Equal(got, data) {
			t.Fatalf("read %d: %d bytes, not the blob", i, len(got))
		}
	}
	if got := read(1000); !bytes.Equal(got, data[1000:]) {
		t.Fatalf("read from 1000: %d bytes, not the rest of the blob", len(got))
	}
	s.cas.mu.Lock()
	kept := len(s.cas.zstd)
	s.cas.mu.Unlock()
	if kept != 1 {
		t.Fatalf("%d zstd forms kept, want 1 (the whole blob's)", kept)
	}

	// A compressed upload is kept as uploaded and served as such.
	up := bytes.Repeat([]byte("uploaded compressed, "), 50000)
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	z := enc.EncodeAll(up, nil)
	ud := digest.NewFromBlob(up)
	ws, err := bs.Write(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("%s/uploads/%s/compressed-blobs/zstd/%s/%d", Instance, "9f3c8e4a-1b2d-4c5e-8f6a-7b8c9d0e1f2a", ud.Hash, ud.Size)
	for off := 0; off < len(z); off += 64 << 10 {
		end := min(off+64<<10, len(z))
		req := &bspb.WriteRequest{WriteOffset: int64(off), Data: z[off:end], FinishWrite: end == len(z)}
		if off == 0 {
			req.ResourceName = name
		}
		if err := ws.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ws.CloseAndRecv(); err != nil {
		t.Fatalf("compressed upload: %v", err)
	}
	s.cas.mu.Lock()
	stored := s.cas.zstd[ud.Hash]
	s.cas.mu.Unlock()
	if !bytes.Equal(stored, z) {
		t.Fatalf("kept zstd form of the upload: %d bytes, want the %d uploaded", len(stored), len(z))
	}
	d = ud
	if got := read(0); !bytes.Equal(got, up) {
		t.Fatalf("read of the uploaded blob: %d bytes, not the blob", len(got))
	}
}
