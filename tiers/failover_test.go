package tiers_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/tiertest"
)

// faultStack is top (memory) over middle and bottom (memory tiers wrapped
// by tiertest.Faulty), each holding what the row puts there.
type faultStack struct {
	s                   *tiers.Stack
	reg                 *prometheus.Registry
	top, middle, bottom *tiertest.Faulty
}

func newFaultStack(t *testing.T) *faultStack {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := tiers.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	fs := &faultStack{
		reg:    reg,
		top:    tiertest.NewFaulty(newMem(t, "top", 0)),
		middle: tiertest.NewFaulty(newMem(t, "middle", 0)),
		bottom: tiertest.NewFaulty(newMem(t, "bottom", 0)),
	}
	fs.s = tiers.NewStack(tiers.StackConfig{Name: "test", Metrics: m, Tiers: []tiers.Entry{
		{Tier: fs.top}, {Tier: fs.middle}, {Tier: fs.bottom},
	}})
	t.Cleanup(func() { fs.s.Close() })
	return fs
}

func (fs *faultStack) tier(name string) *tiertest.Faulty {
	switch name {
	case "top":
		return fs.top
	case "middle":
		return fs.middle
	default:
		return fs.bottom
	}
}

// TestStackFailover: a tier that fails while serving a blob does not fail
// the read when another tier holds it: the stack goes on from the next one
// in the same read, and the caller sees one correct stream. Bytes already
// delivered are kept only if the next source starts with the same bytes;
// wrong bytes a caller has been handed end in a mismatch, never in io.EOF.
// Every bad copy is skipped afterwards and repaired, and no tier is left
// holding wrong bytes.
func TestStackFailover(t *testing.T) {
	const big, small = 600 << 10, 20 << 10
	tests := []struct {
		desc string
		size int
		in   []string // tiers holding the blob
		at   string   // the faulty tier
		ft   tiertest.Fault
		// firstErr: the first read fails with ErrMismatch (wrong bytes
		// were delivered before the fault showed); every later read
		// succeeds.
		firstErr bool
		bad      bool // the faulty tier's copy is marked bad and repaired
	}{
		{desc: "fill source breaks mid-stream: resumed from the next tier", size: big,
			in: []string{"middle", "bottom"}, at: "middle", ft: tiertest.Fault{Kind: tiertest.FaultBreak, At: 300 << 10, Times: 1}},
		{desc: "fill source truncated (verifying reader): resumed, copy repaired", size: big,
			in: []string{"middle", "bottom"}, at: "middle", ft: tiertest.Fault{Kind: tiertest.FaultTruncate, At: 300 << 10, Verify: true}, bad: true},
		{desc: "fill source breaks before its first byte: restarted from the next tier", size: big,
			in: []string{"middle", "bottom"}, at: "middle", ft: tiertest.Fault{Kind: tiertest.FaultBreak, At: 0, Times: 1}},
		{desc: "fill source flips a byte (verifying reader): the read that got it fails, then the copy is skipped and repaired", size: big,
			in: []string{"middle", "bottom"}, at: "middle", ft: tiertest.Fault{Kind: tiertest.FaultFlip, At: 1000, Verify: true}, firstErr: true, bad: true},
		{desc: "fill source flips a byte (unverified reader): caught by the stack", size: big,
			in: []string{"middle", "bottom"}, at: "middle", ft: tiertest.Fault{Kind: tiertest.FaultFlip, At: big - 1}, firstErr: true, bad: true},
		{desc: "fill source flips a byte, then breaks: the next tier's prefix differs", size: big,
			in: []string{"middle", "bottom"}, at: "middle", ft: tiertest.Fault{Kind: tiertest.FaultBreak, At: 300 << 10, FlipAt: 10, Times: 1}, firstErr: true},
		{desc: "small blob, flipped byte: read whole before anyone sees it, so the next tier serves it", size: small,
			in: []string{"middle", "bottom"}, at: "middle", ft: tiertest.Fault{Kind: tiertest.FaultFlip, At: 5, Verify: true}, bad: true},
		{desc: "small blob, broken mid-read", size: small,
			in: []string{"middle", "bottom"}, at: "middle", ft: tiertest.Fault{Kind: tiertest.FaultBreak, At: 100, Times: 1}},
		{desc: "top hit breaks mid-stream: resumed from below", size: big,
			in: []string{"top", "bottom"}, at: "top", ft: tiertest.Fault{Kind: tiertest.FaultBreak, At: 256 << 10, Times: 1}},
		{desc: "top hit truncated: resumed from below, top repaired", size: big,
			in: []string{"top", "bottom"}, at: "top", ft: tiertest.Fault{Kind: tiertest.FaultTruncate, At: 100 << 10}, bad: true},
		{desc: "top hit flips a byte (memory, unverified): caught, skipped, repaired", size: big,
			in: []string{"top", "middle"}, at: "top", ft: tiertest.Fault{Kind: tiertest.FaultFlip, At: 7}, firstErr: true, bad: true},
		{desc: "bottom (last source) breaks once: the read fails, the next succeeds", size: big,
			in: []string{"bottom"}, at: "bottom", ft: tiertest.Fault{Kind: tiertest.FaultBreak, At: 300 << 10, Times: 1}, firstErr: true},
	}
	for i, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			fs := newFaultStack(t)
			ctx := context.Background()
			want, d := tiertest.RandomBytes(int64(100+i), tt.size)
			for _, name := range tt.in {
				put(t, fs.tier(name), want)
			}
			fs.tier(tt.at).Inject(d, tt.ft)
			lastOnly := len(tt.in) == 1

			got, _, err := readAll(ctx, fs.s, d)
			switch {
			case tt.firstErr && lastOnly:
				if err == nil {
					t.Fatalf("first read succeeded from a tier that broke with no other source")
				}
			case tt.firstErr:
				if !errors.Is(err, blob.ErrMismatch) {
					t.Fatalf("first read = %v, want ErrMismatch (wrong bytes were delivered)", err)
				}
			case err != nil:
				t.Fatalf("first read = %v", err)
			case !bytes.Equal(got, want):
				t.Fatalf("first read returned wrong bytes with io.EOF")
			}

			// Every later read succeeds, without the bad copy.
			opensBefore := fs.tier(tt.at).Opens(d)
			for i := range 2 {
				got, _, err := readAll(ctx, fs.s, d)
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("later read = %d bytes, %v; want the blob", len(got), err)
				}
				if n := fs.tier(tt.at).Opens(d) - opensBefore; i == 0 && tt.firstErr && tt.bad && n != 0 {
					// Skipped, not read, until repaired (the repair
					// needs no read of it either).
					t.Errorf("the bad copy was opened %d times by the read after it was found bad", n)
				}
			}
			if tt.bad {
				// A repair by Delete and Put clears the fault at the Delete:
				// wait for the repair to be counted too.
				waitFor(t, "the bad copy to be repaired", func() bool {
					return !fs.tier(tt.at).Faulted(d) &&
						metricValue(t, fs.reg, tiers.MetricRepairs, map[string]string{"tier": tt.at}) > 0
				})
				if n := metricValue(t, fs.reg, tiers.MetricBadCopies, map[string]string{"tier": tt.at}); n != 1 {
					t.Errorf("%s{tier=%s} = %v, want 1", tiers.MetricBadCopies, tt.at, n)
				}
				if n := metricValue(t, fs.reg, tiers.MetricRepairs, map[string]string{"tier": tt.at, "result": "ok"}); n != 1 {
					t.Errorf("%s{tier=%s,result=ok} = %v, want 1", tiers.MetricRepairs, tt.at, n)
				}
			} else if n := metricValue(t, fs.reg, tiers.MetricBadCopies, nil); n != 0 {
				t.Errorf("%s = %v, want 0 (no tier served wrong bytes)", tiers.MetricBadCopies, n)
			}
			if !tt.firstErr {
				if n := metricValue(t, fs.reg, tiers.MetricFailovers, map[string]string{"tier": tt.at}); n < 1 {
					t.Errorf("%s{tier=%s} = %v, want >= 1", tiers.MetricFailovers, tt.at, n)
				}
			}
			// No tier holds wrong bytes, whatever it holds.
			fs.tier(tt.at).Clear(d) // a fault left that is not a stored copy (Times)
			for _, name := range []string{"top", "middle", "bottom"} {
				b, _, err := readAll(ctx, fs.tier(name), d)
				if err == nil && !bytes.Equal(b, want) {
					t.Errorf("tier %s holds wrong bytes", name)
				}
			}
		})
	}
}

// TestStackFailoverAllSourcesFail: when every source fails, the caller gets
// one error naming them, never io.EOF.
func TestStackFailoverAllSourcesFail(t *testing.T) {
	fs := newFaultStack(t)
	want, d := tiertest.RandomBytes(7, 500<<10)
	put(t, fs.middle, want)
	put(t, fs.bottom, want)
	fs.middle.Inject(d, tiertest.Fault{Kind: tiertest.FaultBreak, At: 200 << 10})
	fs.bottom.Inject(d, tiertest.Fault{Kind: tiertest.FaultBreak, At: 100 << 10})
	_, _, err := readAll(context.Background(), fs.s, d)
	if !errors.Is(err, blob.ErrUnavailable) {
		t.Fatalf("read = %v, want the first source's ErrUnavailable", err)
	}
	for _, name := range []string{"middle", "bottom"} {
		if !bytes.Contains([]byte(err.Error()), []byte(name)) {
			t.Errorf("error %q does not name tier %s", err, name)
		}
	}
	if has(t, fs.top, d) {
		t.Errorf("a failed read filled the top tier")
	}
}

// repairable is a Faulty tier that is also a tiers.Repairer, counting
// repairs; Put of a held blob keeps the (bad) copy, as a remote server may.
type repairable struct {
	*tiertest.Faulty
	repairs int
}

func (r *repairable) Repair(ctx context.Context, d blob.Digest, size int64, src io.Reader) error {
	r.repairs++
	var buf bytes.Buffer
	if _, err := blob.Copy(&buf, src, d, size); err != nil {
		return err
	}
	r.Faulty.Clear(d)
	return nil
}

// TestStackRepairUsesRepairer: a tier that implements Repairer is repaired
// through it (not by Delete and Put), also when the stack instruments it.
func TestStackRepairUsesRepairer(t *testing.T) {
	for _, instrumented := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "instrumented"}[instrumented], func(t *testing.T) {
			var m *tiers.Metrics
			if instrumented {
				m, _ = tiers.NewMetrics(nil)
			}
			mid := &repairable{Faulty: tiertest.NewFaulty(newMem(t, "middle", 0))}
			bottom := newMem(t, "bottom", 0)
			s := tiers.NewStack(tiers.StackConfig{Metrics: m, Tiers: []tiers.Entry{{Tier: newMem(t, "top", 0)}, {Tier: mid}, {Tier: bottom}}})
			defer s.Close()
			want, d := tiertest.RandomBytes(9, 300<<10)
			put(t, mid, want)
			put(t, bottom, want)
			mid.Inject(d, tiertest.Fault{Kind: tiertest.FaultTruncate, At: 1000, Verify: true})
			got, _, err := readAll(context.Background(), s, d)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("read = %d bytes, %v", len(got), err)
			}
			waitFor(t, "the repair", func() bool { return !mid.Faulted(d) })
			if mid.repairs != 1 {
				t.Errorf("Repair called %d times, want 1", mid.repairs)
			}
			if !has(t, mid, d) {
				t.Errorf("the repaired tier lost the blob (Delete used instead of Repair?)")
			}
		})
	}
}

// TestInstrumentKeepsRepairer: Instrument keeps Repair exactly when the
// wrapped tier has it.
func TestInstrumentKeepsRepairer(t *testing.T) {
	m, _ := tiers.NewMetrics(nil)
	if _, ok := tiers.Instrument(&repairable{Faulty: tiertest.NewFaulty(newMem(t, "r", 0))}, m).(tiers.Repairer); !ok {
		t.Errorf("an instrumented Repairer is not a Repairer")
	}
	if _, ok := tiers.Instrument(newMem(t, "m", 0), m).(tiers.Repairer); ok {
		t.Errorf("an instrumented memory tier claims to be a Repairer")
	}
}

// TestStackFailoverTrusted: bytes from a trusted tier are not hashed, but
// when it breaks, the source the read goes on from is verified whole, from
// its first byte: a copy that is wrong only in the part the trusted tier
// had already delivered still fails the read instead of ending it.
func TestStackFailoverTrusted(t *testing.T) {
	tests := []struct {
		desc      string
		bottomBad bool // the bottom's copy has a flipped byte before the break
		wantErr   error
	}{
		{desc: "trusted top breaks; bottom's copy is good: resumed", wantErr: nil},
		{desc: "trusted top breaks; bottom's copy is wrong before the break: mismatch", bottomBad: true, wantErr: blob.ErrMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			top := tiertest.NewFaulty(newMem(t, "top", 0))
			bottom := tiertest.NewFaulty(newMem(t, "bottom", 0))
			s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top, Trusted: true}, {Tier: bottom}}})
			defer s.Close()
			want, d := tiertest.RandomBytes(11, 400<<10)
			put(t, top, want)
			put(t, bottom, want)
			top.Inject(d, tiertest.Fault{Kind: tiertest.FaultBreak, At: 200 << 10, Times: 1})
			if tt.bottomBad {
				bottom.Inject(d, tiertest.Fault{Kind: tiertest.FaultFlip, At: 100 << 10})
			}
			got, _, err := readAll(context.Background(), s, d)
			switch {
			case tt.wantErr == nil && (err != nil || !bytes.Equal(got, want)):
				t.Fatalf("read = %d bytes, %v; want the blob", len(got), err)
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Fatalf("read = %d bytes, %v; want %v", len(got), err, tt.wantErr)
			}
		})
	}
}
