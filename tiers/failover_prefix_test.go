package tiers_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/memory"
	"github.com/strata-oci/strata/tiers/tiertest"
)

// TestStackFailoverVerifiedSource: a source whose reader verifies itself
// (tiertest's Verify, the same blob.Verifier the disk and REAPI tiers
// serve) is not hashed by the stack; when it fails after k bytes, the
// stack takes the hash of the k bytes it delivered from it and compares
// the next copy's first k bytes with it. A good prefix goes on from the
// next copy; a rotten prefix (in either copy) ends the read in a mismatch,
// never in io.EOF; a next copy that rots after the prefix is caught at its
// end, whether it verifies itself or the stack hashes it.
func TestStackFailoverVerifiedSource(t *testing.T) {
	const size, k = 600 << 10, 300 << 10
	tests := []struct {
		desc     string
		middle   tiertest.Fault // the verified source (Verify is set)
		bottom   *tiertest.Fault
		wantErr  error // of the first read; nil: the blob
		failed   bool  // the first read fails (with the source's error)
		failover bool  // the read went on from the bottom
		noBottom bool  // the bottom was not opened
	}{
		{desc: "breaks after k bytes, the next copy is good and verifies itself: resumed",
			middle: tiertest.Fault{Kind: tiertest.FaultBreak, At: k, Times: 1}, bottom: &tiertest.Fault{Kind: tiertest.FaultBreak, At: size + 1, Verify: true}, failover: true},
		{desc: "breaks after k bytes, the next copy is good and unverified (memory): resumed, hashed by the stack from its first byte",
			middle: tiertest.Fault{Kind: tiertest.FaultBreak, At: k, Times: 1}, failover: true},
		{desc: "delivered a rotten prefix, then breaks: mismatch",
			middle: tiertest.Fault{Kind: tiertest.FaultBreak, At: k, FlipAt: 10, Times: 1}, wantErr: blob.ErrMismatch},
		{desc: "breaks after k bytes, the next (verified) copy is rotten in the prefix: mismatch",
			middle: tiertest.Fault{Kind: tiertest.FaultBreak, At: k, Times: 1}, bottom: &tiertest.Fault{Kind: tiertest.FaultFlip, At: 10, Verify: true}, wantErr: blob.ErrMismatch},
		{desc: "breaks after k bytes, the next (unverified) copy is rotten in the prefix: mismatch",
			middle: tiertest.Fault{Kind: tiertest.FaultBreak, At: k, Times: 1}, bottom: &tiertest.Fault{Kind: tiertest.FaultFlip, At: k - 1}, wantErr: blob.ErrMismatch},
		{desc: "breaks after k bytes, the next (verified) copy rots after the prefix: mismatch at its end",
			middle: tiertest.Fault{Kind: tiertest.FaultBreak, At: k, Times: 1}, bottom: &tiertest.Fault{Kind: tiertest.FaultFlip, At: k + 10, Verify: true}, wantErr: blob.ErrMismatch, failover: true},
		{desc: "breaks after k bytes, the next (unverified) copy rots after the prefix: the stack's hash catches it",
			middle: tiertest.Fault{Kind: tiertest.FaultBreak, At: k, Times: 1}, bottom: &tiertest.Fault{Kind: tiertest.FaultFlip, At: size - 1}, wantErr: blob.ErrMismatch, failover: true},
		{desc: "breaks after its last byte: the bytes are the blob, no other source asked",
			middle: tiertest.Fault{Kind: tiertest.FaultBreak, At: size, Times: 1}, noBottom: true},
		{desc: "delivered every byte, one rotten, then breaks: the read fails, no other source asked",
			middle: tiertest.Fault{Kind: tiertest.FaultBreak, At: size, FlipAt: size - 1, Times: 1}, failed: true, noBottom: true},
	}
	for i, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m, err := tiers.NewMetrics(reg)
			if err != nil {
				t.Fatal(err)
			}
			middle := tiertest.NewFaulty(newMem(t, "middle", 0))
			bottom := tiertest.NewFaulty(newMem(t, "bottom", 0))
			// The middle is the top: a hit, streamed without a fill.
			s := tiers.NewStack(tiers.StackConfig{Name: "v", Metrics: m, Tiers: []tiers.Entry{{Tier: middle}, {Tier: bottom}}})
			defer s.Close()
			want, d := tiertest.RandomBytes(int64(300+i), size)
			put(t, middle, want)
			put(t, bottom, want)
			ft := tt.middle
			ft.Verify = true
			middle.Inject(d, ft)
			if tt.bottom != nil {
				bottom.Inject(d, *tt.bottom)
			}
			got, _, err := readAll(context.Background(), s, d)
			switch {
			case tt.failed:
				if err == nil {
					t.Fatalf("read = %d bytes ending in io.EOF; want an error (a byte was wrong)", len(got))
				}
			case tt.wantErr == nil && (err != nil || !bytes.Equal(got, want)):
				t.Fatalf("read = %d bytes, %v; want the blob", len(got), err)
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Fatalf("read = %d bytes, %v; want %v", len(got), err, tt.wantErr)
			}
			failovers := metricValue(t, reg, tiers.MetricFailovers, map[string]string{"tier": "middle"})
			if tt.failover != (failovers > 0) {
				t.Errorf("%s{tier=middle} = %v, want a fail-over: %v", tiers.MetricFailovers, failovers, tt.failover)
			}
			if n := bottom.Opens(d); tt.noBottom && n != 0 {
				t.Errorf("the bottom was opened %d times; the bytes delivered settle the read alone", n)
			}
		})
	}
}

// claimer serves a memory tier's blobs through readers that claim to
// verify them (blob.VerifiedReader of the blob), with flip, if >= 0,
// flipping the byte at that offset. With prefix, the reader is also a
// blob.PrefixHasher whose state is that of the blob's true bytes (whatever
// it yields); brk, if > 0, breaks the reader after that many bytes. It
// stands for a self-verifying reader, to show what the stack trusts.
type claimer struct {
	blob.Tier
	flip   int64
	prefix bool
	brk    int64
}

func (c *claimer) Open(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	rc, info, err := c.Tier.Open(ctx, d)
	if err != nil {
		return rc, info, err
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return nil, blob.Info{}, err
	}
	cr := &claimsReader{data: data, d: d, flip: c.flip, brk: c.brk}
	if c.prefix {
		return &claimsPrefixReader{cr}, info, nil
	}
	return cr, info, nil
}

type claimsReader struct {
	data      []byte
	off       int64
	d         blob.Digest
	flip, brk int64
}

func (r *claimsReader) VerifiedBlob() (blob.Digest, int64) { return r.d, int64(len(r.data)) }

func (r *claimsReader) Read(p []byte) (int, error) {
	end := int64(len(r.data))
	if r.brk > 0 {
		end = min(end, r.brk)
	}
	if r.off >= end {
		if end < int64(len(r.data)) {
			return 0, blob.ErrUnavailable
		}
		return 0, io.EOF
	}
	n := copy(p, r.data[r.off:end])
	if r.flip >= r.off && r.flip < r.off+int64(n) {
		p[r.flip-r.off] ^= 0xff
	}
	r.off += int64(n)
	return n, nil
}

func (r *claimsReader) Close() error { return nil }

type claimsPrefixReader struct{ *claimsReader }

func (r *claimsPrefixReader) PrefixState() (hash.Hash, int64) {
	h := sha256.New()
	h.Write(r.data[:r.off])
	return h, r.off
}

// TestStackTrustsASelfVerifyingSource: what the stack's hashing once
// means. A source whose reader is a blob.VerifiedReader of the blob and a
// blob.PrefixHasher is not hashed again: its io.EOF is taken as the check
// (so a reader that lies about it is believed, which is why only readers
// that verify themselves may claim it), and after it fails, the hash of
// the bytes it delivered is its PrefixState, not a hash of its own. A
// VerifiedReader that cannot tell its prefix state is hashed as before.
func TestStackTrustsASelfVerifyingSource(t *testing.T) {
	const size = 300 << 10
	tests := []struct {
		desc    string
		top     claimer
		wantErr error // nil: the read ends in io.EOF
	}{
		{desc: "a self-verifying source's io.EOF is the check: its bytes are not hashed again",
			top: claimer{flip: 1000, prefix: true}},
		{desc: "a VerifiedReader without a prefix state is hashed by the stack",
			top: claimer{flip: 1000}, wantErr: blob.ErrMismatch},
		{desc: "after a failure the next copy is compared with the source's prefix state",
			top: claimer{flip: -1, prefix: true, brk: 100 << 10}},
	}
	for i, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			top := tt.top
			top.Tier = newMem(t, "top", 0)
			bottom := newMem(t, "bottom", 0)
			s := tiers.NewStack(tiers.StackConfig{Name: "c", Tiers: []tiers.Entry{{Tier: &top}, {Tier: bottom}}})
			defer s.Close()
			want, d := tiertest.RandomBytes(int64(400+i), size)
			put(t, top.Tier, want)
			put(t, bottom, want)
			got, _, err := readAll(context.Background(), s, d)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("read = %d bytes, %v; want %v", len(got), err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("read = %d bytes, %v; want io.EOF", len(got), err)
			}
			if len(got) != size {
				t.Fatalf("read %d bytes, want %d", len(got), size)
			}
		})
	}
}

// lyingPrefix is a claimer whose PrefixState is that of other bytes than
// it yields (the first byte flipped).
type lyingPrefix struct{ blob.Tier }

func (l lyingPrefix) Open(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	rc, info, err := (&claimer{Tier: l.Tier, flip: -1, brk: 100 << 10}).Open(ctx, d)
	if err != nil {
		return rc, info, err
	}
	return lyingPrefixReader{rc.(*claimsReader)}, info, nil
}

type lyingPrefixReader struct{ *claimsReader }

func (r lyingPrefixReader) PrefixState() (hash.Hash, int64) {
	b := bytes.Clone(r.data[:r.off])
	if len(b) > 0 {
		b[0] ^= 0xff
	}
	h := sha256.New()
	h.Write(b)
	return h, r.off
}

// TestStackFailoverComparesThePrefixState: when a self-verifying source
// fails, the next copy is compared with the hash its PrefixState gives for
// the bytes delivered (the stack has no hash of its own): a state that
// does not match the next copy's first bytes fails the read with a
// mismatch, though the bytes the caller holds happen to be right.
func TestStackFailoverComparesThePrefixState(t *testing.T) {
	top, bottom := newMem(t, "top", 0), newMem(t, "bottom", 0)
	s := tiers.NewStack(tiers.StackConfig{Name: "l", Tiers: []tiers.Entry{{Tier: lyingPrefix{top}}, {Tier: bottom}}})
	defer s.Close()
	want, d := tiertest.RandomBytes(500, 300<<10)
	put(t, top, want)
	put(t, bottom, want)
	if got, _, err := readAll(context.Background(), s, d); !errors.Is(err, blob.ErrMismatch) {
		t.Fatalf("read = %d bytes, %v; want a mismatch (the prefix state differs from the next copy)", len(got), err)
	}
}

// TestDiskReaderIsAPrefixHasher: the disk tier's reader, also through
// Instrument, verifies itself and tells the hash of the bytes it yielded,
// so a stack over it hashes them once.
func TestDiskReaderIsAPrefixHasher(t *testing.T) {
	ctx := context.Background()
	dk := openDisk(t, t.TempDir())
	want, d := tiertest.RandomBytes(600, 200<<10)
	put(t, dk, want)
	m, err := tiers.NewMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, tier := range map[string]blob.Tier{"disk": dk, "instrumented disk": tiers.Instrument(dk, m)} {
		rc, _, err := tier.Open(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		if vd, vn := blob.VerifiedBlobOf(rc); vd != d || vn != int64(len(want)) {
			t.Errorf("%s: VerifiedBlobOf = %s, %d; want %s, %d", name, vd, vn, d, len(want))
		}
		const k = 70000
		if _, err := io.CopyN(io.Discard, rc, k); err != nil {
			t.Fatal(err)
		}
		h, n := blob.PrefixStateOf(rc)
		if h == nil || n != k {
			t.Fatalf("%s: PrefixStateOf after %d bytes = %v, %d", name, k, h, n)
		}
		if got, exp := h.Sum(nil), sha256.Sum256(want[:k]); !bytes.Equal(got, exp[:]) {
			t.Errorf("%s: the prefix state is not the hash of the first %d bytes", name, k)
		}
		rc.Close()
	}
}

// BenchmarkStackReadFromDisk reads a blob through a memory tier that
// declines it over a disk tier, as the default stack reads a layer too
// large for memory: the disk tier's reader hashes it, and the stack's
// stream should not hash it again. With metrics, every tier is wrapped
// by Instrument, as in a host.
func BenchmarkStackReadFromDisk(b *testing.B) {
	for _, instrumented := range []bool{false, true} {
		for _, size := range []int{1 << 20, 64 << 20} {
			name := fmt.Sprintf("plain/%dMiB", size>>20)
			var m *tiers.Metrics
			if instrumented {
				name = fmt.Sprintf("instrumented/%dMiB", size>>20)
				var err error
				if m, err = tiers.NewMetrics(nil); err != nil {
					b.Fatal(err)
				}
			}
			b.Run(name, func(b *testing.B) {
				mem := memory.New(memory.Config{Name: "memory", MaxBlob: 1})
				b.Cleanup(func() { mem.Close() })
				s := tiers.NewStack(tiers.StackConfig{Metrics: m, Tiers: []tiers.Entry{{Tier: mem}, {Tier: openDisk(b, b.TempDir())}}})
				ctx := context.Background()
				d := tiertest.PutRandom(b, ctx, s, 5, int64(size))
				buf := make([]byte, 256<<10)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					rc, info, err := s.Open(ctx, d)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{rc}, buf); err != nil {
						b.Fatal(err)
					}
					rc.Close()
					if info.Tier != "disk" {
						b.Fatalf("served by %q", info.Tier)
					}
				}
			})
		}
	}
}
