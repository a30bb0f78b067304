package reapi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"google.golang.org/grpc/codes"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/reapitest"
)

// The tests in this file run the tier against internal/reapitest's fault
// injector. Timeouts are tiny where a test waits for one; nothing asserts
// how fast anything is.

// readFault reads d through tier and returns what the reader gave before
// it ended, and how it ended (nil: verified EOF).
func readFault(t *testing.T, tier *Tier, d blob.Digest) ([]byte, error) {
	t.Helper()
	rc, _, err := tier.Open(context.Background(), d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// TestReadFaults: for each fault on a ByteStream Read, the read either
// returns exactly the blob (resumed where the stream broke) or fails with a
// classified error; it never returns wrong bytes as good.
func TestReadFaults(t *testing.T) {
	const size = 1 << 20
	const at = 300 << 10
	tests := []struct {
		desc string
		f    reapitest.Fault
		// wantErr nil: the read returns the blob. Otherwise the error the
		// read fails with; wantNot must not match it.
		wantErr, wantNot error
		// wantReads is the number of ByteStream Reads of the blob.
		wantReads int
		// exactResume: the resumed read_offset is exactly at (plain
		// streams, where every received byte is delivered).
		exactResume bool
		wantStalled bool
	}{
		{desc: "abort after 300 KiB with UNAVAILABLE, once: resumed",
			f:         reapitest.Fault{Action: reapitest.Abort, AfterBytes: at, Times: 1},
			wantReads: 2, exactResume: true},
		{desc: "abort with RESOURCE_EXHAUSTED, once: resumed",
			f:         reapitest.Fault{Action: reapitest.Abort, AfterBytes: at, Code: codes.ResourceExhausted, Times: 1},
			wantReads: 2, exactResume: true},
		{desc: "abort with INTERNAL, once: resumed",
			f:         reapitest.Fault{Action: reapitest.Abort, AfterBytes: at, Code: codes.Internal, Times: 1},
			wantReads: 2, exactResume: true},
		{desc: "connection dropped after 300 KiB, once: resumed",
			f:         reapitest.Fault{Action: reapitest.Drop, AfterBytes: at, Times: 1},
			wantReads: 2},
		{desc: "every stream aborted after 100 KiB: gives up after MaxResumes",
			f:       reapitest.Fault{Action: reapitest.Abort, AfterBytes: 100 << 10},
			wantErr: blob.ErrUnavailable, wantNot: blob.ErrMismatch, wantReads: 1 + DefaultMaxResumes},
		{desc: "aborted with NOT_FOUND mid-stream: not resumed",
			f:       reapitest.Fault{Action: reapitest.Abort, AfterBytes: at, Code: codes.NotFound, Times: 1},
			wantErr: blob.ErrNotFound, wantNot: blob.ErrMismatch, wantReads: 1},
		{desc: "stalled after 300 KiB: fails after StallTimeout, not resumed",
			f:       reapitest.Fault{Action: reapitest.Stall, AfterBytes: at},
			wantErr: blob.ErrUnavailable, wantNot: blob.ErrMismatch, wantReads: 1, wantStalled: true},
		{desc: "byte 500000 flipped: mismatch, not resumed",
			f:       reapitest.Fault{Action: reapitest.Flip, AfterBytes: 500000, Times: 1},
			wantErr: blob.ErrMismatch, wantNot: blob.ErrUnavailable, wantReads: 1},
		{desc: "UNAVAILABLE before the first byte, twice: retried from 0",
			f:         reapitest.Fault{Action: reapitest.Fail, Times: 2},
			wantReads: 3},
	}
	for _, zstd := range []bool{false, true} {
		for _, tt := range tests {
			t.Run(map[bool]string{false: "plain/", true: "zstd/"}[zstd]+tt.desc, func(t *testing.T) {
				f := startFake(t, fakeOptions{zstd: zstd, chunk: 64 << 10})
				tier := newTier(t, f, func(c *Config) {
					c.StallTimeout = 100 * time.Millisecond
					c.Breaker.Failures = -1
					if tt.wantStalled {
						// One failure opens it: shows the stall was counted.
						c.Breaker = BreakerConfig{Failures: 1, CoolDown: time.Hour}
					}
				})
				data := randomBytes(42, size)
				d := put(t, tier, data)
				ff := tt.f
				ff.Call, ff.Hash = reapitest.Read, d.Encoded()
				in := f.Inject(ff)
				got, err := readFault(t, tier, d)
				if in.Hits() == 0 {
					t.Fatal("the fault never fired")
				}
				offsets := f.ReadOffsets(d.Encoded()) // of the Reads the fake served
				if n := f.Calls(reapitest.Read); n != tt.wantReads {
					t.Errorf("%d ByteStream Reads (served at offsets %v), want %d", n, offsets, tt.wantReads)
				}
				if tt.wantErr == nil {
					if err != nil || !bytes.Equal(got, data) {
						t.Fatalf("read = %d bytes, %v; want the blob", len(got), err)
					}
					if tt.wantReads > 1 && tt.f.Action != reapitest.Fail {
						if off := offsets[1]; off <= 0 || off > at || (tt.exactResume && !zstd && off != at) {
							t.Errorf("resumed at %d, want (0, %d]%s", off, at, map[bool]string{true: " exactly", false: ""}[tt.exactResume && !zstd])
						}
						if s := tier.Stats(); s.Resumes != 1 {
							t.Errorf("Stats.Resumes = %d, want 1", s.Resumes)
						}
					}
					return
				}
				if !errors.Is(err, tt.wantErr) || errors.Is(err, tt.wantNot) {
					t.Fatalf("read = %d bytes, %v; want %v and not %v", len(got), err, tt.wantErr, tt.wantNot)
				}
				if len(got) >= size && tt.wantErr != blob.ErrMismatch {
					t.Fatalf("a failed read delivered all %d bytes", len(got))
				}
				// Bytes delivered before the failure are a true prefix.
				if tt.wantErr != blob.ErrMismatch && !bytes.Equal(got, data[:len(got)]) {
					t.Fatal("the bytes before the failure are not the blob's")
				}
				if tt.wantErr == blob.ErrMismatch {
					var me *blob.MismatchError
					if !errors.As(err, &me) || me.Want != d {
						t.Fatalf("mismatch error %v is not a *blob.MismatchError for %s", err, d)
					}
				}
				if tt.wantStalled != errors.Is(err, errStalled) {
					t.Errorf("stalled = %v, want %v (%v)", errors.Is(err, errStalled), tt.wantStalled, err)
				}
				if tt.wantStalled {
					if s := tier.Stats().Breaker; s.Opens != 1 {
						t.Errorf("breaker after a stall = %+v, want opened once", s)
					}
				}
			})
		}
	}
}

// TestBlobLostWhileResuming: the blob is evicted while its read is broken;
// the resumed read misses and the read fails as unavailable, and the tier
// forgets the blob.
func TestBlobLostWhileResuming(t *testing.T) {
	f := startFake(t, fakeOptions{chunk: 64 << 10})
	tier := newTier(t, f, func(c *Config) { c.ExistenceTTL = -1 })
	data := randomBytes(43, 1<<20)
	d := put(t, tier, data)
	f.Inject(reapitest.Fault{Call: reapitest.Read, Hash: d.Encoded(), Action: reapitest.Abort, AfterBytes: 200 << 10, Times: 1})
	rc, _, err := tier.Open(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, make([]byte, 100<<10)); err != nil {
		t.Fatal(err)
	}
	f.Lose(d.Encoded())
	n, err := io.Copy(io.Discard, rc)
	if !errors.Is(err, blob.ErrUnavailable) || errors.Is(err, blob.ErrMismatch) {
		t.Fatalf("read after the blob vanished = %d more bytes, %v; want ErrUnavailable", n, err)
	}
	if offs := f.ReadOffsets(d.Encoded()); len(offs) != 2 || offs[1] != 200<<10 {
		t.Fatalf("Read offsets %v, want a resume at %d", offs, 200<<10)
	}
	if _, err := tier.Stat(context.Background(), d); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Stat after the loss = %v, want ErrNotFound", err)
	}
}

// TestUnaryFaults: faults on the unary calls give classified errors; a
// transient one is retried away.
func TestUnaryFaults(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		desc    string
		call    reapitest.Call
		action  reapitest.Action
		code    codes.Code
		times   int
		op      string // "stat", "open" (fresh tier: size index lookup), "getref"
		wantErr error
	}{
		{"FindMissingBlobs UNAVAILABLE once: retried", reapitest.FindMissing, reapitest.Fail, codes.Unavailable, 1, "stat", nil},
		{"FindMissingBlobs RESOURCE_EXHAUSTED always", reapitest.FindMissing, reapitest.Fail, codes.ResourceExhausted, 0, "stat", blob.ErrUnavailable},
		{"FindMissingBlobs stalled", reapitest.FindMissing, reapitest.Stall, 0, 0, "stat", blob.ErrUnavailable},
		{"FindMissingBlobs connection dropped", reapitest.FindMissing, reapitest.Drop, 0, 0, "stat", blob.ErrUnavailable},
		{"GetActionResult UNAVAILABLE always", reapitest.GetActionResult, reapitest.Fail, codes.Unavailable, 0, "open", blob.ErrUnavailable},
		{"GetActionResult RESOURCE_EXHAUSTED once: retried", reapitest.GetActionResult, reapitest.Fail, codes.ResourceExhausted, 1, "open", nil},
		{"GetActionResult stalled", reapitest.GetActionResult, reapitest.Stall, 0, 0, "open", blob.ErrUnavailable},
		{"BatchReadBlobs of the ref's metadata flipped", reapitest.BatchRead, reapitest.Flip, 0, 0, "getref", blob.ErrMismatch},
		{"BatchReadBlobs UNAVAILABLE always", reapitest.BatchRead, reapitest.Fail, codes.Unavailable, 0, "getref", blob.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			f := startFake(t, fakeOptions{})
			mod := func(c *Config) {
				c.CallTimeout = 200 * time.Millisecond
				c.ExistenceTTL = -1
				c.Breaker.Failures = -1
			}
			data := randomBytes(44, 10<<10)
			d := put(t, newTier(t, f, nil), data)
			k := blob.RefKey{Namespace: "tag", Name: "faulty"}
			if err := newTier(t, f, nil).PutRef(ctx, k, blob.Ref{Digest: d, Size: int64(len(data))}); err != nil {
				t.Fatal(err)
			}
			tier := newTier(t, f, mod) // fresh: knows no sizes
			in := f.Inject(reapitest.Fault{Call: tt.call, Action: tt.action, Code: tt.code, Times: tt.times})
			defer in.Remove()
			var err error
			switch tt.op {
			case "stat":
				tier.learnSize(d, int64(len(data)), true)
				_, err = tier.Stat(ctx, d)
			case "open":
				var got []byte
				got, err = readFault(t, tier, d)
				if err == nil && !bytes.Equal(got, data) {
					t.Fatal("read wrong bytes")
				}
			case "getref":
				_, err = tier.GetRef(ctx, k)
			}
			if in.Hits() == 0 {
				t.Fatal("the fault never fired")
			}
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("%s = %v, want %v", tt.op, err, tt.wantErr)
			}
			if tt.wantErr != nil && errors.Is(err, blob.ErrNotFound) {
				t.Fatalf("%s = %v: a fault must not read as a miss", tt.op, err)
			}
		})
	}
}

// TestLostBehindActionCache: the CAS loses the blob an ActionCache entry
// names. Whether the server drops the entry (strict, as bazel-remote and
// Buildbarn) or still serves it, the tier reports a miss, never wrong bytes.
func TestLostBehindActionCache(t *testing.T) {
	ctx := context.Background()
	for _, strict := range []bool{true, false} {
		t.Run(map[bool]string{true: "strict", false: "lenient"}[strict], func(t *testing.T) {
			f := startFake(t, fakeOptions{lenient: !strict})
			data := randomBytes(45, 200<<10)
			d := put(t, newTier(t, f, nil), data)
			k := blob.RefKey{Namespace: "derived", Name: "ext4"}
			if err := newTier(t, f, nil).PutRef(ctx, k, blob.Ref{Digest: d, Size: int64(len(data))}); err != nil {
				t.Fatal(err)
			}

			// The size index entry: a fresh tier's Open looks it up.
			in := f.Inject(reapitest.Fault{Call: reapitest.GetActionResult, Action: reapitest.LoseOutputs, Hash: d.Encoded(), Times: 1})
			tier := newTier(t, f, nil)
			if _, _, err := tier.Open(ctx, d); !errors.Is(err, blob.ErrNotFound) {
				t.Fatalf("Open of a blob lost behind its size index entry = %v, want ErrNotFound", err)
			}
			if in.Hits() != 1 {
				t.Fatalf("fault hits = %d", in.Hits())
			}
			// The ref still names it: a miss either way (strict: the
			// entry is gone; lenient: the ref reads, its blob misses).
			r, err := newTier(t, f, nil).GetRef(ctx, k)
			if strict {
				if !errors.Is(err, blob.ErrNotFound) {
					t.Fatalf("GetRef of a ref whose blob was lost (strict) = %+v, %v; want ErrNotFound", r, err)
				}
			} else {
				if err != nil {
					t.Fatalf("GetRef (lenient) = %v", err)
				}
				reader := newTier(t, f, nil)
				if _, err := reader.GetRef(ctx, k); err != nil {
					t.Fatal(err)
				}
				if _, _, err := reader.Open(ctx, r.Digest); !errors.Is(err, blob.ErrNotFound) {
					t.Fatalf("Open of a ref's lost blob (lenient) = %v, want ErrNotFound", err)
				}
			}
			// A Put brings it back.
			put(t, tier, data)
			if got := readAll(t, newTier(t, f, nil), d); !bytes.Equal(got, data) {
				t.Fatal("read after re-upload differs")
			}
		})
	}
}

// TestWriteFaults: a ByteStream upload that breaks or stalls fails as
// unavailable and commits nothing; the next Put stores the blob.
func TestWriteFaults(t *testing.T) {
	tests := []struct {
		desc        string
		f           reapitest.Fault
		wantStalled bool
	}{
		{"aborted after 1 MiB", reapitest.Fault{Action: reapitest.Abort, AfterBytes: 1 << 20, Times: 1}, false},
		{"connection dropped after 1 MiB", reapitest.Fault{Action: reapitest.Drop, AfterBytes: 1 << 20, Times: 1}, false},
		{"stalled after 1 MiB", reapitest.Fault{Action: reapitest.Stall, AfterBytes: 1 << 20, Times: 1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			f := startFake(t, fakeOptions{})
			tier := newTier(t, f, func(c *Config) { c.CallTimeout, c.StallTimeout = time.Second, 100*time.Millisecond })
			data := randomBytes(46, 5<<20)
			d := blob.FromBytes(data)
			ff := tt.f
			ff.Call, ff.Hash = reapitest.Write, d.Encoded()
			in := f.Inject(ff)
			err := tier.Put(context.Background(), d, int64(len(data)), bytes.NewReader(data))
			in.Remove()
			if !errors.Is(err, blob.ErrUnavailable) || errors.Is(err, blob.ErrMismatch) {
				t.Fatalf("Put through a broken upload = %v, want ErrUnavailable", err)
			}
			if tt.wantStalled != errors.Is(err, errStalled) {
				t.Fatalf("stalled = %v, want %v (%v)", errors.Is(err, errStalled), tt.wantStalled, err)
			}
			if _, ok := f.CAS.Get(digest.Digest{Hash: d.Encoded(), Size: int64(len(data))}); ok {
				t.Fatal("the broken upload was committed")
			}
			good := newTier(t, f, nil)
			put(t, good, data)
			if got := readAll(t, good, d); !bytes.Equal(got, data) {
				t.Fatal("read after a good Put differs")
			}
		})
	}
}

// TestRepair: Repair uploads over a copy the server still holds, skipping
// FindMissingBlobs; a server that keeps its copy (bazel-remote,
// BuildBuddy) is reported and the tier keeps treating the copy as bad.
func TestRepair(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		desc         string
		keepExisting bool
		n            int
		wantRefused  bool
	}{
		{"overwriting server, ByteStream-sized blob", false, 5 << 20, false},
		{"overwriting server, batch-sized blob", false, 10 << 10, false},
		{"server that keeps its copy, ByteStream-sized blob", true, 5 << 20, true},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			f := startFake(t, fakeOptions{keepExisting: tt.keepExisting})
			tier := newTier(t, f, nil)
			data := randomBytes(47, tt.n)
			d := put(t, tier, data)
			rd := digest.Digest{Hash: d.Encoded(), Size: int64(tt.n)}
			f.rotBlob(d.Encoded())
			writes := f.CAS.BlobWrites(rd)
			findMissing := f.Calls(reapitest.FindMissing)

			err := tier.Repair(ctx, d, int64(tt.n), bytes.NewReader(data))
			if tt.wantRefused {
				if !errors.Is(err, blob.ErrUnsupported) {
					t.Fatalf("Repair on a server that keeps its copy = %v, want ErrUnsupported", err)
				}
				if tier.Stats().RepairsRefused != 1 {
					t.Errorf("RepairsRefused = %d, want 1", tier.Stats().RepairsRefused)
				}
				// The tier does not serve the copy it could not replace.
				if _, err := tier.Stat(ctx, d); !errors.Is(err, blob.ErrNotFound) {
					t.Fatalf("Stat after a refused repair = %v, want ErrNotFound", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Repair = %v", err)
			}
			if f.Calls(reapitest.FindMissing) != findMissing {
				t.Error("Repair asked FindMissingBlobs")
			}
			if f.CAS.BlobWrites(rd) != writes+1 {
				t.Fatalf("blob written %d times by Repair, want 1", f.CAS.BlobWrites(rd)-writes)
			}
			// The rot interceptor heals on upload: the server's copy is good.
			if got := readAll(t, newTier(t, f, nil), d); !bytes.Equal(got, data) {
				t.Fatal("read after repair differs")
			}
			// A Repair with wrong bytes stores nothing.
			bad := bytes.Clone(data)
			bad[0] ^= 1
			if err := tier.Repair(ctx, d, int64(tt.n), bytes.NewReader(bad)); !errors.Is(err, blob.ErrMismatch) {
				t.Fatalf("Repair with wrong bytes = %v, want ErrMismatch", err)
			}
			if stored, _ := f.CAS.Get(rd); !bytes.Equal(stored, data) {
				t.Fatal("Repair with wrong bytes changed the stored blob")
			}
		})
	}
}

// TestConformanceProxy runs the tier conformance suite through the proxy
// with small stream messages and no faults armed.
func TestConformanceProxy(t *testing.T) { conformance(t, fakeOptions{chunk: 16 << 10, zstd: true}) }
