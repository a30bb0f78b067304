package tiers_test

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/tiertest"
)

// TestStackReadYourWrites holds the race of a fill that missed a blob just
// before a write of it completed: a caller that opens the blob after the
// write returned, and joins that fill, must not be handed its stale miss.
// The fill is held right after its miss (the probe's afterOpen seam) until
// the write has completed and the later caller has joined it, so each row
// plays the race the same way every time.
func TestStackReadYourWrites(t *testing.T) {
	tests := []struct {
		desc string
		size int
		// build returns the stack (named "test"), the view the readers
		// use, the probed tier whose first miss of the blob is held, and
		// the write that completes while the fill is held.
		build func(t *testing.T, m *tiers.Metrics, want []byte) (reader *tiers.Stack, held *probe, write func(context.Context) error)
	}{
		{
			desc: "Put of a blob the top declines, while the fill holds its miss of the bottom",
			size: 1 << 20,
			build: func(t *testing.T, m *tiers.Metrics, want []byte) (*tiers.Stack, *probe, func(context.Context) error) {
				bottom := newProbe(newMem(t, "bottom", 0))
				s := tiers.NewStack(tiers.StackConfig{Name: "test", Metrics: m, Tiers: []tiers.Entry{
					{Tier: newMem(t, "top", 64<<10)}, {Tier: bottom},
				}})
				return s, bottom, func(ctx context.Context) error {
					return s.Put(ctx, blob.FromBytes(want), int64(len(want)), bytes.NewReader(want))
				}
			},
		},
		{
			desc: "Put of a small blob through a view without the top",
			size: 4 << 10,
			build: func(t *testing.T, m *tiers.Metrics, want []byte) (*tiers.Stack, *probe, func(context.Context) error) {
				bottom := newProbe(newMem(t, "bottom", 0))
				s := tiers.NewStack(tiers.StackConfig{Name: "test", Metrics: m, Tiers: []tiers.Entry{
					{Tier: newMem(t, "top", 0), Shared: true}, {Tier: bottom},
				}})
				return s, bottom, func(ctx context.Context) error {
					return s.Local().Put(ctx, blob.FromBytes(want), int64(len(want)), bytes.NewReader(want))
				}
			},
		},
		{
			desc:  "a fill of the whole stack streams the blob back below the view's top",
			size:  1 << 20,
			build: fillBelowTop(64 << 10),
		},
		{
			desc:  "a fill of the whole stack puts a small blob back below the view's top",
			size:  4 << 10,
			build: fillBelowTop(1 << 10),
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			ctx := context.Background()
			reg := prometheus.NewRegistry()
			m, err := tiers.NewMetrics(reg)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := tiertest.RandomBytes(41, tt.size)
			d := blob.FromBytes(want)
			reader, held, write := tt.build(t, m, want)

			missed, release := make(chan struct{}), make(chan struct{})
			var holding atomic.Bool
			held.afterOpen = func(od blob.Digest, err error) {
				if od == d && errors.Is(err, blob.ErrNotFound) && holding.CompareAndSwap(false, true) {
					close(missed)
					<-release
				}
			}

			type result struct {
				got []byte
				err error
			}
			before := make(chan result, 1)
			go func() {
				got, _, err := readAll(ctx, reader, d)
				before <- result{got, err}
			}()
			<-missed // the first caller's fill has looked and missed

			if err := write(ctx); err != nil {
				t.Fatalf("write = %v", err)
			}
			if _, err := reader.Stat(ctx, d); err != nil {
				t.Fatalf("Stat after the write = %v", err)
			}
			after := make(chan result, 1)
			go func() {
				got, _, err := readAll(ctx, reader, d)
				after <- result{got, err}
			}()
			waitFor(t, "the later Open to join the held fill", func() bool {
				return metricValue(t, reg, tiers.MetricCollapsed, map[string]string{"stack": "test"}) == 1
			})
			close(release)

			if r := <-before; !errors.Is(r.err, blob.ErrNotFound) {
				t.Errorf("Open that started the fill before the write = %d bytes, %v; want its own miss", len(r.got), r.err)
			}
			if r := <-after; r.err != nil || !bytes.Equal(r.got, want) {
				t.Errorf("Open after the write completed = %d bytes, %v; want the %d bytes written", len(r.got), r.err, len(want))
			}
		})
	}
}

// fillBelowTop builds a stack of top (declining blobs over topMax), a probed
// mid and low (shared), which holds the blob; readers use the Local view
// (without low), and the write is a read of the whole stack that fills
// mid.
func fillBelowTop(topMax int64) func(*testing.T, *tiers.Metrics, []byte) (*tiers.Stack, *probe, func(context.Context) error) {
	return func(t *testing.T, m *tiers.Metrics, want []byte) (*tiers.Stack, *probe, func(context.Context) error) {
		mid := newProbe(newMem(t, "mid", 0))
		low := newMem(t, "low", 0)
		put(t, low, want)
		s := tiers.NewStack(tiers.StackConfig{Name: "test", Metrics: m, Tiers: []tiers.Entry{
			{Tier: newMem(t, "top", topMax)}, {Tier: mid}, {Tier: low, Shared: true},
		}})
		return s.Local(), mid, func(ctx context.Context) error {
			// Read to the end: the write-back into mid has committed
			// when the reader reports io.EOF.
			got, _, err := readAll(ctx, s, blob.FromBytes(want))
			if err == nil && !bytes.Equal(got, want) {
				err = errors.New("the filling read returned wrong bytes")
			}
			return err
		}
	}
}
