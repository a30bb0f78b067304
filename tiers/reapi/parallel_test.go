package reapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	bspb "google.golang.org/genproto/googleapis/bytestream"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/reapitest"
)

// readReq is a ByteStream Read or Write the fake received.
type readReq struct {
	write      bool
	compressed bool // compressed-blobs/zstd
	hash       string
	offset     int64
	limit      int64
}

func (r readReq) String() string {
	enc := "blobs"
	if r.compressed {
		enc = "zstd"
	}
	return fmt.Sprintf("%s@%d+%d", enc, r.offset, r.limit)
}

// wireLog records the ByteStream requests and batch uploads the fake
// receives, and can disturb the Reads of one read_offset (a part): its
// interceptors run behind internal/reapitest's fault injector.
type wireLog struct {
	mu      sync.Mutex
	reqs    []readReq
	batches map[string]repb.Compressor_Value // hash -> compressor of its batch upload
	waits   map[int64]chan struct{}          // closed when a Read at this offset arrives

	// onPart, when set, wraps the server stream of the first Read at
	// read_offset partAt.
	partAt int64
	onPart func(ss grpc.ServerStream) grpc.ServerStream
	fired  bool
}

func newWireLog() *wireLog {
	return &wireLog{batches: map[string]repb.Compressor_Value{}, waits: map[int64]chan struct{}{}}
}

// arrived returns a channel closed when a Read at offset arrives.
func (l *wireLog) arrived(offset int64) chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.waits[offset]
	if !ok {
		c = make(chan struct{})
		l.waits[offset] = c
	}
	return c
}

// reads returns the Reads (write false) or Writes (write true) of hash.
func (l *wireLog) of(hash string, write bool) []readReq {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []readReq
	for _, r := range l.reqs {
		if r.hash == hash && r.write == write {
			out = append(out, r)
		}
	}
	return out
}

func (l *wireLog) options(o fakeOptions) fakeOptions {
	o.unary = append(o.unary, func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if r, ok := req.(*repb.BatchUpdateBlobsRequest); ok {
			l.mu.Lock()
			for _, b := range r.GetRequests() {
				l.batches[b.GetDigest().GetHash()] = b.GetCompressor()
			}
			l.mu.Unlock()
		}
		return h(ctx, req)
	})
	o.stream = append(o.stream, func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return h(srv, &logStream{ServerStream: ss, l: l})
	})
	return o
}

type logStream struct {
	grpc.ServerStream
	l      *wireLog
	logged bool
	wrap   grpc.ServerStream
}

func (s *logStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if s.logged {
		return nil
	}
	var r readReq
	var name string
	switch req := m.(type) {
	case *bspb.ReadRequest:
		name, r.offset, r.limit = req.GetResourceName(), req.GetReadOffset(), req.GetReadLimit()
	case *bspb.WriteRequest:
		name, r.write = req.GetResourceName(), true
	default:
		return nil
	}
	s.logged = true
	r.compressed = strings.Contains(name, "/compressed-blobs/zstd/")
	r.hash = resourceHash(name)
	l := s.l
	l.mu.Lock()
	l.reqs = append(l.reqs, r)
	c, ok := l.waits[r.offset]
	if !ok {
		c = make(chan struct{})
		l.waits[r.offset] = c
	}
	if !r.write {
		select {
		case <-c:
		default:
			close(c)
		}
	}
	if !r.write && l.onPart != nil && !l.fired && r.offset == l.partAt {
		l.fired = true
		s.wrap = l.onPart(s.ServerStream)
	}
	l.mu.Unlock()
	return nil
}

func (s *logStream) SendMsg(m any) error {
	if s.wrap != nil {
		return s.wrap.SendMsg(m)
	}
	return s.ServerStream.SendMsg(m)
}

// afterFirst returns an onPart hook: the stream's first message goes out,
// then act runs instead of the second one.
func afterFirst(act func(ss grpc.ServerStream, m any) error) func(grpc.ServerStream) grpc.ServerStream {
	return func(ss grpc.ServerStream) grpc.ServerStream {
		return &sendHook{ServerStream: ss, onSend: func(n int, m any) error {
			if n == 1 {
				return act(ss, m)
			}
			return nil
		}}
	}
}

// gzipLike is incompressible content that starts like a gzip stream.
func gzipLike(seed uint64, n int) []byte {
	b := randomBytes(seed, n)
	copy(b, []byte{0x1f, 0x8b, 0x08, 0x00})
	return b
}

// Part layout for the parallel tests: parts of 256 KiB, 64 KiB messages.
const (
	testPart  = 256 << 10
	testChunk = 64 << 10
)

func parallelConfig(c *Config) {
	c.Parallel = ParallelConfig{Threshold: 2 * testPart, PartSize: testPart, Streams: 4, Memory: 3 * testPart}
}

// wantParts returns the ranged Reads a parallel read of size bytes makes.
func wantParts(size int64) []readReq {
	var out []readReq
	for off := int64(0); off < size; off += testPart {
		out = append(out, readReq{offset: off, limit: min(int64(testPart), size-off)})
	}
	return out
}

func sortReqs(rs []readReq) []readReq {
	rs = slices.Clone(rs)
	for i := range rs {
		rs[i].hash = ""
	}
	slices.SortFunc(rs, func(a, b readReq) int { return int(a.offset - b.offset) })
	return rs
}

// TestParallelRead: a large blob is read as ranged parts, several at once,
// and delivered exactly; small blobs, disabled parallelism and content read
// as zstd keep one stream.
func TestParallelRead(t *testing.T) {
	tests := []struct {
		desc string
		o    fakeOptions
		mod  func(*Config)
		data []byte
		// want is the Reads the fake serves (sorted by offset); nil means
		// wantParts(len(data)).
		want []readReq
	}{
		{desc: "six parts, the last one short", data: randomBytes(1, 5*testPart+1000)},
		{desc: "exactly four parts", data: randomBytes(2, 4*testPart)},
		{desc: "at the threshold", data: randomBytes(3, 2*testPart)},
		{desc: "below the threshold: one stream", data: randomBytes(4, 2*testPart-1),
			want: []readReq{{offset: 0}}},
		{desc: "parallel reads disabled: one stream", data: randomBytes(5, 5*testPart),
			mod: func(c *Config) { c.Parallel.Threshold = -1 }, want: []readReq{{offset: 0}}},
		{desc: "one stream per read: one stream", data: randomBytes(5, 5*testPart),
			mod: func(c *Config) { c.Parallel.Streams = 1 }, want: []readReq{{offset: 0}}},
		{desc: "zstd server, gzip content: identity parts", o: fakeOptions{zstd: true}, data: gzipLike(6, 5*testPart)},
		{desc: "zstd server, content that compresses: one zstd stream", o: fakeOptions{zstd: true},
			data: compressibleBlob(5 * testPart), want: []readReq{{offset: 0, compressed: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			l := newWireLog()
			o := tt.o
			o.chunk = testChunk
			f := startFake(t, l.options(o))
			tier := newTier(t, f, func(c *Config) {
				parallelConfig(c)
				if tt.mod != nil {
					tt.mod(c)
				}
			})
			d := put(t, tier, tt.data)
			got, err := readFault(t, tier, d)
			if err != nil || !bytes.Equal(got, tt.data) {
				t.Fatalf("read = %d bytes, %v; want the %d-byte blob", len(got), err, len(tt.data))
			}
			want := tt.want
			if want == nil {
				want = wantParts(int64(len(tt.data)))
			}
			if reads := sortReqs(l.of(d.Encoded(), false)); !slices.Equal(reads, want) {
				t.Errorf("Reads served %v, want %v", reads, want)
			}
			if n := tier.readAhead.InUse(); n != 0 {
				t.Errorf("%d bytes of read-ahead budget still held after Close", n)
			}
		})
	}
}

// TestParallelReadAhead: Open starts reading the next Streams-1 parts
// before the caller read a byte, never more, and never beyond the tier's
// memory budget, which two reads share; Close gives the budget back.
func TestParallelReadAhead(t *testing.T) {
	l := newWireLog()
	f := startFake(t, l.options(fakeOptions{chunk: testChunk}))
	tier := newTier(t, f, func(c *Config) {
		parallelConfig(c)
		c.Parallel.Memory = 4 * testPart
	})
	a := randomBytes(7, 8*testPart)
	b := randomBytes(8, 8*testPart)
	da, db := put(t, tier, a), put(t, tier, b)

	ra, _, err := tier.Open(context.Background(), da)
	if err != nil {
		t.Fatal(err)
	}
	defer ra.Close()
	// Streams 4: parts 1..3 are read ahead at once.
	for _, off := range []int64{testPart, 2 * testPart, 3 * testPart} {
		select {
		case <-l.arrived(off):
		case <-time.After(time.Minute): // a failsafe, not a speed bound
			t.Fatalf("part at %d was not read ahead (reads %v)", off, l.of(da.Encoded(), false))
		}
	}
	if n := tier.readAhead.InUse(); n != 3*testPart {
		t.Errorf("budget in use after one Open = %d, want %d", n, 3*testPart)
	}
	// The second read finds room for one part only.
	rb, _, err := tier.Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	if n := tier.readAhead.InUse(); n != 4*testPart {
		t.Errorf("budget in use after two Opens = %d, want %d (the whole budget)", n, 4*testPart)
	}
	if reads := l.of(da.Encoded(), false); len(reads) > 4 {
		t.Errorf("%d Reads of the first blob before it was read, want at most 4: %v", len(reads), reads)
	}
	gotB, err := io.ReadAll(rb)
	rb.Close()
	if err != nil || !bytes.Equal(gotB, b) {
		t.Fatalf("second read = %d bytes, %v", len(gotB), err)
	}
	gotA, err := io.ReadAll(ra)
	if err != nil || !bytes.Equal(gotA, a) {
		t.Fatalf("first read = %d bytes, %v", len(gotA), err)
	}
	ra.Close()
	if n := tier.readAhead.InUse(); n != 0 {
		t.Errorf("budget in use after both reads = %d, want 0", n)
	}
	for _, tc := range []struct {
		d    blob.Digest
		want []readReq
	}{{da, wantParts(int64(len(a)))}, {db, wantParts(int64(len(b)))}} {
		if reads := sortReqs(l.of(tc.d.Encoded(), false)); !slices.Equal(reads, tc.want) {
			t.Errorf("Reads of %s: %v, want %v", tc.d, reads, tc.want)
		}
	}

	// A reader closed mid-way gives its budget back at Close.
	rc, _, err := tier.Open(context.Background(), da)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if n := tier.readAhead.InUse(); n != 0 {
		t.Errorf("budget in use after Close mid-read = %d, want 0", n)
	}
	if _, err := rc.Read(make([]byte, 10)); err == nil || err == io.EOF {
		t.Errorf("Read after Close = %v, want an error", err)
	}
}

// TestParallelReadFaults: faults on single parts of a parallel read, from
// internal/reapitest's injector (which hits the first Read: part 0, the
// one being delivered) and from a hook on the Read of part 2 (read ahead).
// The read either returns exactly the blob or fails classified; corrupt
// content fails at EOF, after every byte was handed over, and never as
// good.
func TestParallelReadFaults(t *testing.T) {
	const size = 6*testPart + 1000
	const part2 = 2 * testPart
	flip := afterFirst(func(ss grpc.ServerStream, m any) error {
		r := m.(*bspb.ReadResponse)
		r.Data = bytes.Clone(r.Data)
		r.Data[10] ^= 0x20
		return nil
	})
	tests := []struct {
		desc   string
		fault  *reapitest.Fault
		onPart func(grpc.ServerStream) grpc.ServerStream
		// wantErr nil: the read returns the blob.
		wantErr, wantNot error
		// wantResumedAt: a Read at this offset with the rest of its part
		// as read_limit must have been served.
		wantResumedAt int64
		wantResumes   bool
		anyResumes    bool
	}{
		{desc: "part 0 aborted mid-part: resumed in its part",
			fault:         &reapitest.Fault{Action: reapitest.Abort, AfterBytes: testPart / 2, Times: 1},
			wantResumedAt: testPart / 2, wantResumes: true},
		{desc: "connection dropped mid-part: read completes",
			fault:      &reapitest.Fault{Action: reapitest.Drop, AfterBytes: testPart / 2, Times: 1},
			anyResumes: true}, // retried from 0 when the first message was lost too
		{desc: "part 0 stalled: the caller's stream fails after StallTimeout, not resumed",
			fault:   &reapitest.Fault{Action: reapitest.Stall, AfterBytes: testPart / 2},
			wantErr: blob.ErrUnavailable, wantNot: blob.ErrMismatch},
		{desc: "every stream aborted: gives up",
			fault:   &reapitest.Fault{Action: reapitest.Abort, AfterBytes: 1000},
			wantErr: blob.ErrUnavailable, wantNot: blob.ErrMismatch, wantResumes: true},
		{desc: "part 0 with a flipped byte: mismatch at EOF",
			fault:   &reapitest.Fault{Action: reapitest.Flip, AfterBytes: 5000, Times: 1},
			wantErr: blob.ErrMismatch, wantNot: blob.ErrUnavailable},
		{desc: "part 2 with a flipped byte: mismatch at EOF",
			onPart:  flip,
			wantErr: blob.ErrMismatch, wantNot: blob.ErrUnavailable},
		{desc: "part 2 stalled after its first message: read again from there, read completes",
			onPart: afterFirst(func(ss grpc.ServerStream, m any) error {
				<-ss.Context().Done()
				return ss.Context().Err()
			}),
			wantResumedAt: part2 + testChunk, wantResumes: true},
		{desc: "part 2 aborted after its first message: resumed in its part",
			onPart: afterFirst(func(ss grpc.ServerStream, m any) error {
				return status.Error(codes.Unavailable, "test: part aborted")
			}),
			wantResumedAt: part2 + testChunk, wantResumes: true},
		{desc: "part 2 ended early by the server: the blob reads short, mismatch at EOF",
			onPart:  func(ss grpc.ServerStream) grpc.ServerStream { return &firstOnly{ServerStream: ss} },
			wantErr: blob.ErrMismatch, wantNot: blob.ErrUnavailable},
	}
	servers := []struct {
		desc string
		o    fakeOptions
		data []byte
	}{
		{"plain/", fakeOptions{}, randomBytes(9, size)},
		{"zstd server, gzip content/", fakeOptions{zstd: true}, gzipLike(9, size)},
	}
	for _, srv := range servers {
		for _, tt := range tests {
			t.Run(srv.desc+tt.desc, func(t *testing.T) {
				l := newWireLog()
				l.partAt, l.onPart = part2, tt.onPart
				o := srv.o
				o.chunk = testChunk
				f := startFake(t, l.options(o))
				tier := newTier(t, f, func(c *Config) {
					parallelConfig(c)
					c.StallTimeout = 200 * time.Millisecond
					c.Breaker.Failures = -1
				})
				data := srv.data
				d := put(t, tier, data)
				var in *reapitest.Injection
				if tt.fault != nil {
					ff := *tt.fault
					ff.Call, ff.Hash = reapitest.Read, d.Encoded()
					in = f.Inject(ff)
				}
				got, err := readFault(t, tier, d)
				if in != nil && in.Hits() == 0 {
					t.Fatal("the fault never fired")
				}
				reads := sortReqs(l.of(d.Encoded(), false))
				if len(reads) < len(wantParts(size)) && tt.wantErr == nil {
					t.Errorf("Reads %v: fewer than the %d parts", reads, len(wantParts(size)))
				}
				if tt.wantErr == nil {
					if err != nil || !bytes.Equal(got, data) {
						t.Fatalf("read = %d bytes, %v; want the blob (Reads %v)", len(got), err, reads)
					}
				} else {
					if !errors.Is(err, tt.wantErr) || errors.Is(err, tt.wantNot) {
						t.Fatalf("read = %d bytes, %v; want %v and not %v", len(got), err, tt.wantErr, tt.wantNot)
					}
					if tt.wantErr == blob.ErrMismatch {
						var me *blob.MismatchError
						if !errors.As(err, &me) || me.Want != d {
							t.Fatalf("%v is not a *blob.MismatchError for %s", err, d)
						}
						// The error comes at EOF: every byte the server
						// sent was handed over first (a short blob: all
						// it sent before the part that ended).
						if me.GotSize != int64(len(got)) {
							t.Errorf("mismatch after %d bytes, but %d were handed over", me.GotSize, len(got))
						}
						if int64(len(got)) != size && tt.onPart == nil {
							t.Errorf("mismatch after %d of %d bytes, want at EOF", len(got), size)
						}
						if _, err := tier.Stat(context.Background(), d); !errors.Is(err, blob.ErrNotFound) {
							t.Errorf("Stat after a corrupt read = %v, want ErrNotFound", err)
						}
					} else if !bytes.Equal(got, data[:len(got)]) {
						t.Fatal("the bytes before the failure are not the blob's")
					}
				}
				if tt.wantResumedAt > 0 {
					end := (tt.wantResumedAt/testPart + 1) * testPart
					want := readReq{offset: tt.wantResumedAt, limit: end - tt.wantResumedAt}
					if !slices.Contains(reads, want) {
						t.Errorf("Reads %v: no resumed Read %v", reads, want)
					}
				}
				if s := tier.Stats(); !tt.anyResumes && tt.wantResumes != (s.Resumes > 0) {
					t.Errorf("Stats.Resumes = %d, want resumes %v (Reads %v)", s.Resumes, tt.wantResumes, reads)
				}
				if n := tier.readAhead.InUse(); n != 0 {
					t.Errorf("%d bytes of read-ahead budget held after Close", n)
				}
			})
		}
	}
}

// firstOnly sends the first message of a stream and drops the others, so
// the stream ends (OK) early.
type firstOnly struct {
	grpc.ServerStream
	sent bool
}

func (s *firstOnly) SendMsg(m any) error {
	if s.sent {
		return nil
	}
	s.sent = true
	return s.ServerStream.SendMsg(m)
}

// TestCompressionChoice: zstd is used per blob, only for content that
// compresses, on upload and on read; a tier that did not upload the blob
// decides from its first bytes. Counted from the resource names and batch
// compressors the fake saw.
func TestCompressionChoice(t *testing.T) {
	const big = 6 << 20 // ByteStream; below the parallel threshold
	const small = 200 << 10
	tests := []struct {
		desc  string
		o     fakeOptions
		mod   func(*Config)
		data  []byte
		fresh bool // read by another tier than the one that wrote
		// wantWrite: "zstd", "blobs", or a batch compressor.
		wantWrite string
		// wantReads are the encodings of the Reads, in order.
		wantReads []string
	}{
		{"gzip layer: identity both ways", fakeOptions{zstd: true}, nil, gzipLike(1, big), false, "blobs", []string{"blobs"}},
		{"zstd layer: identity both ways", fakeOptions{zstd: true}, nil, append([]byte{0x28, 0xb5, 0x2f, 0xfd}, randomBytes(2, big)...), false, "blobs", []string{"blobs"}},
		{"content that compresses: zstd both ways", fakeOptions{zstd: true}, nil, compressibleBlob(big), false, "zstd", []string{"zstd"}},
		{"gzip layer read by another executor: identity", fakeOptions{zstd: true}, nil, gzipLike(3, big), true, "blobs", []string{"blobs"}},
		{"content that compresses read by another executor: identity, then zstd after the first message",
			fakeOptions{zstd: true}, nil, compressibleBlob(big), true, "zstd", []string{"blobs", "zstd"}},
		{"small gzip blob: identity batch", fakeOptions{zstd: true}, nil, gzipLike(4, small), false, "IDENTITY", []string{"blobs"}},
		{"small blob that compresses: zstd batch", fakeOptions{zstd: true}, nil, compressibleBlob(small), false, "ZSTD", []string{"zstd"}},
		{"compression off: identity", fakeOptions{zstd: true}, func(c *Config) { c.Compression = CompressionOff }, compressibleBlob(big), true, "blobs", []string{"blobs"}},
		{"server without zstd: identity", fakeOptions{}, nil, compressibleBlob(big), true, "blobs", []string{"blobs"}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			l := newWireLog()
			f := startFake(t, l.options(tt.o))
			tier := newTier(t, f, tt.mod)
			d := put(t, tier, tt.data)
			reader := tier
			if tt.fresh {
				reader = newTier(t, f, tt.mod)
			}
			if got := readAll(t, reader, d); !bytes.Equal(got, tt.data) {
				t.Fatalf("read %d bytes, not the blob", len(got))
			}
			var write string
			if ws := l.of(d.Encoded(), true); len(ws) > 0 {
				write = map[bool]string{false: "blobs", true: "zstd"}[ws[0].compressed]
			} else {
				l.mu.Lock()
				c, ok := l.batches[d.Encoded()]
				l.mu.Unlock()
				if ok {
					write = c.String()
				}
			}
			if write != tt.wantWrite {
				t.Errorf("upload as %q, want %q", write, tt.wantWrite)
			}
			var reads []string
			rs := l.of(d.Encoded(), false)
			for _, r := range rs {
				reads = append(reads, map[bool]string{false: "blobs", true: "zstd"}[r.compressed])
			}
			if !slices.Equal(reads, tt.wantReads) {
				t.Errorf("Reads %v (%v), want %v", reads, rs, tt.wantReads)
			}
			if len(rs) == 2 && (rs[1].offset != 0 || rs[1].limit != 0) {
				// The whole blob: a server that stores it compressed serves
				// that as stored (see resumingReader.switchToZstd).
				t.Errorf("zstd Read after the first message at %d+%d, want the whole blob (offset 0, no limit)", rs[1].offset, rs[1].limit)
			}
		})
	}
}

// TestConformanceParallel runs the conformance suite with small parts, so
// its large, cancelled and concurrent reads are parallel and contend for
// a small read-ahead budget.
func TestConformanceParallel(t *testing.T) {
	conformance(t, fakeOptions{chunk: testChunk}, func(c *Config) {
		c.Parallel = ParallelConfig{Threshold: testPart, PartSize: testPart, Streams: 4, Memory: 4 * testPart}
	})
}
