package reapitest

import (
	"bytes"
	"context"
	"slices"
	"sync"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Call is a kind of REAPI call.
type Call string

// The calls a Fault can target.
const (
	Read               Call = "ByteStream.Read"
	Write              Call = "ByteStream.Write"
	BatchRead          Call = "BatchReadBlobs"
	BatchUpdate        Call = "BatchUpdateBlobs"
	FindMissing        Call = "FindMissingBlobs"
	GetActionResult    Call = "GetActionResult"
	UpdateActionResult Call = "UpdateActionResult"
	GetCapabilities    Call = "GetCapabilities"
)

var methods = map[string]Call{
	"/google.bytestream.ByteStream/Read":                                          Read,
	"/google.bytestream.ByteStream/Write":                                         Write,
	"/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchReadBlobs":   BatchRead,
	"/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs": BatchUpdate,
	"/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs": FindMissing,
	"/build.bazel.remote.execution.v2.ActionCache/GetActionResult":                GetActionResult,
	"/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult":             UpdateActionResult,
	"/build.bazel.remote.execution.v2.Capabilities/GetCapabilities":               GetCapabilities,
}

// Action is what a Fault does to a call it matches.
type Action int

const (
	// Fail answers the call with Fault.Code (UNAVAILABLE when zero) before
	// the fake sees it.
	Fail Action = iota + 1
	// Abort ends a ByteStream stream with Fault.Code (UNAVAILABLE when
	// zero) once AfterBytes bytes of data went through (a Read sends
	// exactly AfterBytes bytes first). A unary call fails as with Fail.
	Abort
	// Drop closes the TCP connection the call arrived on once AfterBytes
	// bytes of data were handed to the transport (unary calls: before
	// answering); bytes still in flight are lost, so a reader gets at most
	// AfterBytes. The client sees UNAVAILABLE on every call of that
	// connection.
	Drop
	// Stall stops the call once AfterBytes bytes of data went through
	// (unary calls: before the fake sees it) until the Injection is
	// released, or else until the call ends (the client gives up or the
	// server stops).
	Stall
	// Flip inverts one byte: the byte at offset AfterBytes of a Read's
	// data stream (compressed bytes for compressed-blobs), or the byte at
	// AfterBytes (the last one if shorter) of each matching blob of a
	// BatchReadBlobs answer.
	Flip
	// LoseOutputs, on GetActionResult, loses from the CAS (see
	// Server.Lose) the blobs the entry names before answering: the blob
	// Hash when it is set, else all of them.
	LoseOutputs
)

// Fault describes calls to disturb and how.
type Fault struct {
	Call   Call
	Action Action
	// Hash (sha256 hex) limits the fault to calls about this blob: the
	// resource of a ByteStream call, a digest of a CAS batch call or of
	// FindMissingBlobs, or for ActionCache calls the action digest or a
	// blob the entry names. Empty matches every call of the kind.
	Hash string
	// AfterBytes is the data offset at which Abort, Drop, Stall and Flip
	// act.
	AfterBytes int64
	// Code is the status for Fail and Abort; zero means UNAVAILABLE.
	Code codes.Code
	// Times is how many matching calls the fault affects; 0 means all.
	Times int
}

// Injection is an armed Fault.
type Injection struct {
	f       Fault
	release chan struct{}
	once    sync.Once

	mu      sync.Mutex
	hits    int
	removed bool
}

// Inject arms f. When several armed faults match a call, the earliest
// armed one with uses left applies.
func (s *Server) Inject(f Fault) *Injection {
	if f.Code == codes.OK {
		f.Code = codes.Unavailable
	}
	in := &Injection{f: f, release: make(chan struct{})}
	s.mu.Lock()
	s.fault.list = append(s.fault.list, in)
	s.mu.Unlock()
	return in
}

// Release lets stalled calls continue and later ones pass the stall point
// at once. It is safe to call more than once.
func (in *Injection) Release() { in.once.Do(func() { close(in.release) }) }

// Remove disarms the fault (and releases its stalls).
func (in *Injection) Remove() {
	in.mu.Lock()
	in.removed = true
	in.mu.Unlock()
	in.Release()
}

// Hits returns how many calls the fault matched.
func (in *Injection) Hits() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.hits
}

// wait blocks until the injection is released (true) or ctx ends (false).
func (in *Injection) wait(ctx context.Context) bool {
	select {
	case <-in.release:
		return true
	case <-ctx.Done():
		return false
	}
}

// faultSet holds the armed faults, under Server.mu.
type faultSet struct{ list []*Injection }

// take returns the first armed fault for call that matches hashes and has
// uses left, counting the use.
func (s *Server) take(call Call, hashes []string) *Injection {
	s.mu.Lock()
	list := slices.Clone(s.fault.list)
	s.mu.Unlock()
	for _, in := range list {
		if in.f.Call != call || (in.f.Hash != "" && !slices.Contains(hashes, in.f.Hash)) {
			continue
		}
		in.mu.Lock()
		ok := !in.removed && (in.f.Times == 0 || in.hits < in.f.Times)
		if ok {
			in.hits++
		}
		in.mu.Unlock()
		if ok {
			return in
		}
	}
	return nil
}

// dropPeer closes the connection ctx's call arrived on.
func (s *Server) dropPeer(ctx context.Context) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return
	}
	s.mu.Lock()
	lis := s.lis
	s.mu.Unlock()
	lis.drop(p.Addr.String())
}

var errDropped = status.Error(codes.Unavailable, "fake: connection dropped")

func digestHashes(ds []*repb.Digest) []string {
	hs := make([]string, 0, len(ds))
	for _, d := range ds {
		hs = append(hs, d.GetHash())
	}
	return hs
}

// hashes returns the blob hashes a unary request is about.
func (s *Server) hashes(ctx context.Context, req any) []string {
	switch r := req.(type) {
	case *repb.FindMissingBlobsRequest:
		return digestHashes(r.GetBlobDigests())
	case *repb.BatchReadBlobsRequest:
		return digestHashes(r.GetDigests())
	case *repb.BatchUpdateBlobsRequest:
		var hs []string
		for _, b := range r.GetRequests() {
			hs = append(hs, b.GetDigest().GetHash())
		}
		return hs
	case *repb.GetActionResultRequest:
		hs := []string{r.GetActionDigest().GetHash()}
		if res, err := s.AC.GetActionResult(ctx, r); err == nil {
			for _, d := range outputs(res) {
				hs = append(hs, d.Hash)
			}
		}
		return hs
	case *repb.UpdateActionResultRequest:
		hs := []string{r.GetActionDigest().GetHash()}
		for _, d := range outputs(r.GetActionResult()) {
			hs = append(hs, d.Hash)
		}
		return hs
	}
	return nil
}

func (s *Server) unaryFaults(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	call, known := methods[info.FullMethod]
	if !known {
		return handler(ctx, req)
	}
	s.count(call)
	in := s.take(call, s.hashes(ctx, req))
	if in == nil {
		return handler(ctx, req)
	}
	switch in.f.Action {
	case Fail, Abort:
		return nil, status.Errorf(in.f.Code, "fake: injected %s", in.f.Code)
	case Drop:
		s.dropPeer(ctx)
		return nil, errDropped
	case Stall:
		if !in.wait(ctx) {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	case LoseOutputs:
		if r, ok := req.(*repb.GetActionResultRequest); ok {
			if res, err := s.AC.GetActionResult(ctx, r); err == nil {
				for _, d := range outputs(res) {
					if in.f.Hash == "" || d.Hash == in.f.Hash {
						s.cas.lose(d.Hash)
					}
				}
			}
		}
	case Flip:
		resp, err := handler(ctx, req)
		if br, ok := resp.(*repb.BatchReadBlobsResponse); ok && err == nil {
			for _, b := range br.GetResponses() {
				if len(b.Data) > 0 && (in.f.Hash == "" || b.GetDigest().GetHash() == in.f.Hash) {
					b.Data = bytes.Clone(b.Data)
					b.Data[min(in.f.AfterBytes, int64(len(b.Data)-1))] ^= 0xff
				}
			}
		}
		return resp, err
	}
	return handler(ctx, req)
}

func (s *Server) streamFaults(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	call, known := methods[info.FullMethod]
	if !known || (call != Read && call != Write) {
		return handler(srv, ss)
	}
	s.count(call)
	return handler(srv, &faultStream{ServerStream: ss, s: s, call: call})
}

// faultStream applies a fault to one ByteStream call. The fault is chosen
// when the first request (which names the resource) arrives.
type faultStream struct {
	grpc.ServerStream
	s       *Server
	call    Call
	matched bool
	in      *Injection
	n       int64 // data bytes sent (Read) or received (Write)
	done    bool  // the fault acted (Abort, Drop, Stall, Flip act once)
}

func (f *faultStream) RecvMsg(m any) error {
	if err := f.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	var data []byte
	switch r := m.(type) {
	case *bspb.ReadRequest:
		f.match(r.GetResourceName(), false)
	case *bspb.WriteRequest:
		if !f.matched {
			f.match(r.GetResourceName(), true)
		}
		data = r.GetData()
	}
	if f.in == nil {
		return nil
	}
	if f.in.f.Action == Fail && !f.done {
		f.done = true
		return status.Errorf(f.in.f.Code, "fake: injected %s", f.in.f.Code)
	}
	if f.call != Write {
		return nil
	}
	// Act on the first message that takes the upload past AfterBytes
	// (with AfterBytes 0: on the first message), before the fake sees it.
	f.n += int64(len(data))
	if f.done || (f.in.f.Action != Abort && f.in.f.Action != Drop && f.in.f.Action != Stall) ||
		(f.in.f.AfterBytes > 0 && f.n <= f.in.f.AfterBytes) {
		return nil
	}
	return f.act()
}

func (f *faultStream) match(resourceName string, upload bool) {
	f.matched = true
	r, err := parseResource(resourceName, upload)
	if err != nil {
		return
	}
	f.in = f.s.take(f.call, []string{r.d.Hash})
}

// act applies Abort, Drop or Stall; a nil return means the stream goes on.
func (f *faultStream) act() error {
	f.done = true
	switch f.in.f.Action {
	case Abort:
		return status.Errorf(f.in.f.Code, "fake: stream aborted after %d bytes", f.in.f.AfterBytes)
	case Drop:
		f.s.dropPeer(f.Context())
		return errDropped
	case Stall:
		if !f.in.wait(f.Context()) {
			return status.FromContextError(f.Context().Err()).Err()
		}
	}
	return nil
}

func (f *faultStream) SendMsg(m any) error {
	r, ok := m.(*bspb.ReadResponse)
	if !ok || f.in == nil || f.done || f.call != Read {
		return f.ServerStream.SendMsg(m)
	}
	start, end := f.n, f.n+int64(len(r.Data))
	at := f.in.f.AfterBytes
	if end <= at {
		f.n = end
		return f.ServerStream.SendMsg(m)
	}
	// This message crosses the fault's offset.
	k := at - start // bytes of this message before the offset (>= 0)
	if f.in.f.Action == Flip {
		f.done = true
		data := bytes.Clone(r.Data)
		data[k] ^= 0xff
		f.n = end
		return f.ServerStream.SendMsg(&bspb.ReadResponse{Data: data})
	}
	if k > 0 {
		if err := f.ServerStream.SendMsg(&bspb.ReadResponse{Data: r.Data[:k]}); err != nil {
			return err
		}
	}
	f.n = at
	if err := f.act(); err != nil {
		return err
	}
	// Released from a stall: send the rest.
	f.n = end
	return f.ServerStream.SendMsg(&bspb.ReadResponse{Data: r.Data[k:]})
}
