package lease_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/lease"
	"github.com/strata-oci/strata/tiers/memory"
)

var fleetKey = []byte("0123456789abcdef0123456789abcdef-fleet")

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newLeaser(t *testing.T, st lease.Store, c *clock, key []byte) *lease.Leaser {
	t.Helper()
	cfg := lease.Config{Store: st, Key: key, TTL: 10 * time.Second, Settle: 20 * time.Millisecond, PollMin: time.Millisecond, PollMax: 5 * time.Millisecond}
	if c != nil {
		cfg.Now = c.now
	}
	l, err := lease.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

var key = blob.RefKey{Namespace: lease.Namespace, Name: "registry.example/app@" + string(blob.FromBytes([]byte("layer")))}

func TestAcquireThenFollow(t *testing.T) {
	ctx := context.Background()
	st := memory.New(memory.Config{})
	a, b := newLeaser(t, st, nil, fleetKey), newLeaser(t, st, nil, fleetKey)
	ls, _, takeover, err := a.Acquire(ctx, key, 100)
	if err != nil || ls == nil || takeover {
		t.Fatalf("first Acquire: lease %v, takeover %v, err %v; want a fresh lease", ls, takeover, err)
	}
	if ls.Record().Generation != 1 {
		t.Fatalf("generation %d, want 1", ls.Record().Generation)
	}
	other, cur, _, err := b.Acquire(ctx, key, 100)
	if err != nil || other != nil {
		t.Fatalf("second Acquire: lease %v, err %v; want to follow", other, err)
	}
	if cur.Holder != a.Holder() {
		t.Fatalf("follows %q, want %q", cur.Holder, a.Holder())
	}
	if err := ls.Release(ctx, lease.Filled); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := b.Read(ctx, key); ok {
		t.Fatal("a released lease is still there")
	}
}

func TestConcurrentAcquireElectsOne(t *testing.T) {
	ctx := context.Background()
	st := memory.New(memory.Config{})
	var leaders atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 16 {
		l := newLeaser(t, st, nil, fleetKey)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ls, _, _, err := l.Acquire(ctx, key, 1)
			if err != nil {
				t.Error(err)
			}
			if ls != nil {
				leaders.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	// Last writer wins and every writer reads back after the settling
	// delay: one leader, two if a read-back raced a late write.
	if n := leaders.Load(); n < 1 || n > 2 {
		t.Fatalf("%d leaders among 16 concurrent Acquires, want 1 (at most 2)", n)
	}
}

// copyingStore lets a test write raw refs.
func putRaw(t *testing.T, st *memory.Tier, k blob.RefKey, body []byte, mediaType string) {
	t.Helper()
	ctx := context.Background()
	d := blob.FromBytes(body)
	if err := st.Put(ctx, d, int64(len(body)), bytesReader(body)); err != nil {
		t.Fatal(err)
	}
	if err := st.PutRef(ctx, k, blob.Ref{Digest: d, Size: int64(len(body)), MediaType: mediaType}); err != nil {
		t.Fatal(err)
	}
}

func TestInvalidRecordsAreNoLease(t *testing.T) {
	ctx := context.Background()
	otherKey := blob.RefKey{Namespace: lease.Namespace, Name: "registry.example/other@" + string(blob.FromBytes([]byte("x")))}
	for _, tc := range []struct {
		desc  string
		plant func(t *testing.T, st *memory.Tier)
	}{
		{"unsigned record", func(t *testing.T, st *memory.Tier) {
			putRaw(t, st, key, []byte(`{"version":1,"key":"`+key.String()+`","holder":"x","generation":9,"state":"filling","expires":"2999-01-01T00:00:00Z"}`), lease.MediaType)
		}},
		{"signed with another fleet's key", func(t *testing.T, st *memory.Tier) {
			l := newLeaser(t, st, nil, []byte("another-fleet-key-another-fleet-key!!"))
			if ls, _, _, err := l.Acquire(ctx, key, 1); err != nil || ls == nil {
				t.Fatalf("planting: %v %v", ls, err)
			}
		}},
		{"a valid lease of another key replayed under this one", func(t *testing.T, st *memory.Tier) {
			l := newLeaser(t, st, nil, fleetKey)
			if ls, _, _, err := l.Acquire(ctx, otherKey, 1); err != nil || ls == nil {
				t.Fatalf("planting: %v %v", ls, err)
			}
			r, err := st.GetRef(ctx, otherKey)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.PutRef(ctx, key, r); err != nil {
				t.Fatal(err)
			}
		}},
		{"garbage", func(t *testing.T, st *memory.Tier) { putRaw(t, st, key, []byte("not json"), lease.MediaType) }},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			st := memory.New(memory.Config{})
			tc.plant(t, st)
			l := newLeaser(t, st, nil, fleetKey)
			if _, ok, err := l.Read(ctx, key); ok || err != nil {
				t.Fatalf("Read: ok %v err %v; want no lease", ok, err)
			}
			ls, _, _, err := l.Acquire(ctx, key, 1)
			if err != nil || ls == nil {
				t.Fatalf("Acquire over an invalid record: lease %v err %v; want to lead", ls, err)
			}
		})
	}
}

func TestExpiredLeaseIsTakenOverAndFenced(t *testing.T) {
	ctx := context.Background()
	st := memory.New(memory.Config{})
	c := &clock{t: time.Now()}
	a, b := newLeaser(t, st, c, fleetKey), newLeaser(t, st, c, fleetKey)
	la, _, _, err := a.Acquire(ctx, key, 1)
	if err != nil || la == nil {
		t.Fatal(la, err)
	}
	if lb, _, _, _ := b.Acquire(ctx, key, 1); lb != nil {
		t.Fatal("took a live lease")
	}
	c.add(11 * time.Second) // past the 10s TTL, no renewal
	lb, _, takeover, err := b.Acquire(ctx, key, 1)
	if err != nil || lb == nil || !takeover {
		t.Fatalf("Acquire of an expired lease: lease %v takeover %v err %v", lb, takeover, err)
	}
	if g := lb.Record().Generation; g != 2 {
		t.Fatalf("generation %d after a takeover, want 2", g)
	}
	if err := la.Renew(ctx); !errors.Is(err, lease.ErrLost) {
		t.Fatalf("the old holder's Renew: %v, want ErrLost", err)
	}
	// The old holder's release must not disturb the new lease.
	if err := la.Release(ctx, lease.Failed); err != nil {
		t.Fatal(err)
	}
	cur, ok, _ := b.Read(ctx, key)
	if !ok || cur.Holder != b.Holder() || !cur.Live(c.now()) {
		t.Fatalf("after the fenced holder's release: %+v %v", cur, ok)
	}
}

func TestWait(t *testing.T) {
	ctx := context.Background()
	c := &clock{t: time.Now()}
	for _, tc := range []struct {
		desc     string
		leader   func(t *testing.T, ls *lease.Lease)
		doneAt   int // done reports true from this poll on; 0 = never
		deadline time.Duration
		want     string
	}{
		{desc: "the blob arrives", doneAt: 3, deadline: time.Minute, want: "ready"},
		{desc: "the leader failed: take over at once", leader: func(t *testing.T, ls *lease.Lease) {
			if err := ls.Release(context.Background(), lease.Failed); err != nil {
				t.Fatal(err)
			}
		}, deadline: time.Minute, want: "lead"},
		{desc: "the leader is alive and slow: own deadline", deadline: 0, want: "deadline"},
		{desc: "the leader could not share the blob: fill at once", leader: func(t *testing.T, ls *lease.Lease) {
			if err := ls.Release(context.Background(), lease.Unshared); err != nil {
				t.Fatal(err)
			}
		}, deadline: time.Minute, want: "deadline"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			st := memory.New(memory.Config{})
			a, b := newLeaser(t, st, c, fleetKey), newLeaser(t, st, c, fleetKey)
			la, _, _, err := a.Acquire(ctx, key, 1)
			if err != nil || la == nil {
				t.Fatal(la, err)
			}
			if tc.leader != nil {
				tc.leader(t, la)
			}
			polls := 0
			done := func(context.Context) (bool, error) {
				polls++
				return tc.doneAt > 0 && polls >= tc.doneAt, nil
			}
			out, lb, _, err := b.Wait(ctx, key, 1, c.now().Add(tc.deadline), done)
			var got string
			switch {
			case errors.Is(err, lease.ErrDeadline):
				got = "deadline"
			case err != nil:
				t.Fatal(err)
			case out == lease.Ready:
				got = "ready"
			case out == lease.Lead && lb != nil:
				got = "lead"
				if lb.Record().Generation != 2 {
					t.Fatalf("took over at generation %d, want 2", lb.Record().Generation)
				}
			}
			if got != tc.want {
				t.Fatalf("Wait ended with %q, want %q", got, tc.want)
			}
		})
	}
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
