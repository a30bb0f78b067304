package tiers_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers"
)

// logRecorder is a slog.Handler that keeps every record it is handed.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}

// WithAttrs and WithGroup drop what they are given: the stack logs its
// attributes on each record.
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecorder) WithGroup(string) slog.Handler      { return h }

// warnings returns the records at Warn level or above.
func (h *logRecorder) warnings() []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []slog.Record
	for _, r := range h.recs {
		if r.Level >= slog.LevelWarn {
			out = append(out, r)
		}
	}
	return out
}

// recordAttrs returns a record's attributes by key.
func recordAttrs(r slog.Record) map[string]slog.Value {
	m := map[string]slog.Value{}
	r.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value
		return true
	})
	return m
}

// failWrites is a real tier whose Put and PutRef fail with err, wrapped as
// a tier wraps its errors; every other method passes through.
type failWrites struct {
	blob.Tier
	err error
}

func (f failWrites) Put(_ context.Context, d blob.Digest, _ int64, _ io.Reader) error {
	return fmt.Errorf("tier %q: put %s: %w", f.Name(), d, f.err)
}

func (f failWrites) PutRef(_ context.Context, k blob.RefKey, _ blob.Ref) error {
	return fmt.Errorf("tier %q: put ref %s: %w", f.Name(), k, f.err)
}

// TestStackPartialWriteLogged: a Put or PutRef that one tier takes and
// another fails succeeds for the caller, and the stack logs one Warn line
// naming the failing tier and the operation, so a tier that keeps refusing
// writes is not silent. A tier declining the size (blob.ErrTooLarge) is
// no failure and logs nothing; neither does a write every tier took, nor
// one every tier failed (the caller gets that error).
func TestStackPartialWriteLogged(t *testing.T) {
	const msg = "tier failed a write the other tiers took"
	ops := []struct {
		desc, op string
		size     int // of the blob; 0 for PutRef
	}{
		{"Put of a large blob (tee)", "put", 200 << 10},
		{"Put of a small blob (putSmall)", "put", 4 << 10},
		{"PutRef", "put ref", 0},
	}
	tests := []struct {
		desc string
		// errs[i] is what tier i ("top", "bottom") fails writes with; nil:
		// it stores them.
		errs [2]error
		// warnFor is the index of the tier the one Warn names; -1: no Warn.
		warnFor int
		wantErr bool
	}{
		{desc: "top fails", errs: [2]error{errBoom, nil}, warnFor: 0},
		{desc: "bottom fails", errs: [2]error{nil, errBoom}, warnFor: 1},
		{desc: "top unavailable", errs: [2]error{blob.ErrUnavailable, nil}, warnFor: 0},
		{desc: "bottom unavailable", errs: [2]error{nil, blob.ErrUnavailable}, warnFor: 1},
		{desc: "top declines the size", errs: [2]error{blob.ErrTooLarge, nil}, warnFor: -1},
		{desc: "bottom declines the size", errs: [2]error{nil, blob.ErrTooLarge}, warnFor: -1},
		{desc: "every tier takes it", warnFor: -1},
		{desc: "every tier fails", errs: [2]error{errBoom, blob.ErrUnavailable}, warnFor: -1, wantErr: true},
	}
	for _, o := range ops {
		for _, tt := range tests {
			t.Run(o.desc+"/"+tt.desc, func(t *testing.T) {
				ctx := context.Background()
				names := [2]string{"top", "bottom"}
				var mems [2]blob.Tier
				var ents []tiers.Entry
				for i, name := range names {
					mems[i] = newMem(t, name, 0)
					var tier blob.Tier = mems[i]
					if tt.errs[i] != nil {
						tier = failWrites{Tier: mems[i], err: tt.errs[i]}
					}
					ents = append(ents, tiers.Entry{Tier: tier})
				}
				var rec logRecorder
				s := tiers.NewStack(tiers.StackConfig{Name: "partial", Tiers: ents, Logger: slog.New(&rec)})
				t.Cleanup(func() { s.Close() })

				data := bytes.Repeat([]byte("partial write "), 1+o.size/14)[:max(o.size, 1)]
				d := blob.FromBytes(data)
				k := blob.RefKey{Namespace: "n", Name: "k"}
				var err error
				if o.op == "put" {
					err = s.Put(ctx, d, int64(len(data)), bytes.NewReader(data))
				} else {
					err = s.PutRef(ctx, k, blob.Ref{Digest: d, Size: int64(len(data))})
				}
				if tt.wantErr {
					if err == nil {
						t.Fatalf("%s = nil with every tier failing", o.op)
					}
				} else if err != nil {
					t.Fatalf("%s = %v, want nil (a tier took it)", o.op, err)
				}

				// The tiers that did not fail hold the write.
				for i, m := range mems {
					if tt.errs[i] != nil {
						continue
					}
					if o.op == "put" {
						if !has(t, m, d) {
							t.Errorf("%s does not hold the blob", names[i])
						}
					} else if _, err := m.GetRef(ctx, k); err != nil {
						t.Errorf("%s: GetRef = %v", names[i], err)
					}
				}

				warns := rec.warnings()
				if tt.warnFor < 0 {
					for _, r := range warns {
						t.Errorf("unexpected %v %q %v", r.Level, r.Message, recordAttrs(r))
					}
					return
				}
				if len(warns) != 1 {
					t.Fatalf("%d Warn records, want 1: %v", len(warns), warns)
				}
				r := warns[0]
				if r.Level != slog.LevelWarn || r.Message != msg {
					t.Errorf("record = %v %q, want WARN %q", r.Level, r.Message, msg)
				}
				a := recordAttrs(r)
				for key, want := range map[string]string{"stack": "partial", "op": o.op, "tier": names[tt.warnFor]} {
					if got := a[key].String(); got != want {
						t.Errorf("attr %s = %q, want %q", key, got, want)
					}
				}
				if e, ok := a["err"].Any().(error); !ok || !errors.Is(e, tt.errs[tt.warnFor]) {
					t.Errorf("attr err = %v, want an error wrapping %v", a["err"], tt.errs[tt.warnFor])
				}
			})
		}
	}
}
