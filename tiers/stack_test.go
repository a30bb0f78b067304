package tiers_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/tiertest"
)

// twoTiers returns a stack of a memory tier over a probed memory tier, and
// both tiers.
func twoTiers(t *testing.T, m *tiers.Metrics) (*tiers.Stack, blob.Tier, *probe) {
	t.Helper()
	top := newMem(t, "top", 0)
	bottom := newProbe(newMem(t, "bottom", 0))
	s := tiers.NewStack(tiers.StackConfig{Name: "test", Tiers: []tiers.Entry{{Tier: top}, {Tier: bottom}}, Metrics: m})
	return s, top, bottom
}

func TestStackCollapses64Opens(t *testing.T) {
	for _, size := range []int{3 << 20, 4 << 10} { // streamed tee; small blob read whole
		t.Run(fmt.Sprint(size), func(t *testing.T) { testCollapses64Opens(t, size) })
	}
}

func testCollapses64Opens(t *testing.T, size int) {
	reg := prometheus.NewRegistry()
	m, err := tiers.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	s, top, bottom := twoTiers(t, m)
	want, _ := tiertest.RandomBytes(1, size)
	d := put(t, bottom.Tier, want)
	bottom.gate = make(chan struct{})

	const n = 64
	var wg sync.WaitGroup
	errs := make([]error, n)
	tierOf := make([]string, n)
	for i := range n {
		wg.Go(func() {
			got, info, err := readAll(context.Background(), s, d)
			if err == nil && !bytes.Equal(got, want) {
				err = errors.New("wrong bytes")
			}
			errs[i], tierOf[i] = err, info.Tier
		})
	}
	// Every caller but the leader joins the flight while the one bottom
	// Open is held at the gate.
	waitFor(t, "63 callers to join the flight", func() bool {
		return metricValue(t, reg, tiers.MetricCollapsed, map[string]string{"stack": "test"}) == n-1
	})
	close(bottom.gate)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("caller %d: %v", i, err)
		}
	}
	if got := bottom.count("Open"); got != 1 {
		t.Errorf("bottom tier opened %d times, want 1", got)
	}
	served := map[string]int{}
	for _, name := range tierOf {
		served[name]++
	}
	if served["bottom"] != 1 || served["top"] != n-1 {
		t.Errorf("Info.Tier of the %d reads = %v, want bottom once and top for the rest", n, served)
	}
	if !has(t, top, d) {
		t.Errorf("top tier does not hold the blob after the fill")
	}
	if got := metricValue(t, reg, tiers.MetricWriteBacks, map[string]string{"tier": "top", "result": "ok"}); got != 1 {
		t.Errorf("write-backs into top = %v, want 1", got)
	}
	if got := bottom.openReaders.Load(); got != 0 {
		t.Errorf("%d bottom readers left open", got)
	}
}

func TestStackWriteBack(t *testing.T) {
	s, top, bottom := twoTiers(t, nil)
	want, _ := tiertest.RandomBytes(2, 1<<20+17)
	d := put(t, bottom.Tier, want)
	ctx := context.Background()

	got, info, err := readAll(ctx, s, d)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("first read: %d bytes, err %v", len(got), err)
	}
	if info.Tier != "bottom" || info.Size != int64(len(want)) || info.Digest != d {
		t.Errorf("first read Info = %+v, want served by bottom", info)
	}
	// Once the leader has read to EOF the blob is committed above.
	if !has(t, top, d) {
		t.Fatalf("top tier does not hold the blob after a full read")
	}
	got, info, err = readAll(ctx, s, d)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("second read: %d bytes, err %v", len(got), err)
	}
	if info.Tier != "top" {
		t.Errorf("second read served by %q, want top", info.Tier)
	}
	if n := bottom.count("Open"); n != 1 {
		t.Errorf("bottom opened %d times, want 1", n)
	}
	st, err := s.Stat(ctx, d)
	if err != nil || st.Tier != "top" {
		t.Errorf("Stat = %+v, %v; want served by top", st, err)
	}
}

func TestStackEarlyCloseCommitsNothing(t *testing.T) {
	s, top, bottom := twoTiers(t, nil)
	want, _ := tiertest.RandomBytes(3, 4<<20)
	d := put(t, bottom.Tier, want)
	before := runtime.NumGoroutine()

	rc, info, err := s.Open(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	if info.Tier != "bottom" {
		t.Errorf("Info.Tier = %q, want bottom", info.Tier)
	}
	buf := make([]byte, 10)
	if _, err := io.ReadFull(rc, buf); err != nil || !bytes.Equal(buf, want[:10]) {
		t.Fatalf("first 10 bytes: %q, %v", buf, err)
	}
	if err := rc.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	waitGoroutines(t, before)
	waitFor(t, "the bottom reader to be closed", func() bool { return bottom.openReaders.Load() == 0 })
	if has(t, top, d) {
		t.Errorf("top tier holds the blob although the only reader stopped after 10 bytes")
	}
	// Nothing stuck: the next Open fills normally.
	got, _, err := readAll(context.Background(), s, d)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after early close: %d bytes, %v", len(got), err)
	}
	if !has(t, top, d) {
		t.Errorf("top tier lacks the blob after a full read")
	}
}

func TestStackCorruptBottom(t *testing.T) {
	tests := []struct {
		desc   string
		verify bool
		size   int
	}{
		{"rotted tier whose reader verifies", true, 600 << 10},
		{"tier serving wrong bytes unverified", false, 600 << 10},
		{"small blob, rotted tier", true, 1000},
		{"small blob, wrong bytes unverified", false, 1000},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			s, top, bottom := twoTiers(t, nil)
			want, _ := tiertest.RandomBytes(4, tt.size)
			d := put(t, bottom.Tier, want)
			bottom.corrupt, bottom.verify = true, tt.verify
			before := runtime.NumGoroutine()

			_, _, err := readAll(context.Background(), s, d)
			var me *blob.MismatchError
			if !errors.Is(err, blob.ErrMismatch) || !errors.As(err, &me) || me.Want != d {
				t.Fatalf("read of corrupt blob = %v, want a *MismatchError for %s", err, d)
			}
			waitGoroutines(t, before)
			if has(t, top, d) {
				t.Errorf("corrupt bytes were committed into the top tier")
			}
		})
	}
}

func TestStackSkipsUnavailableMiddle(t *testing.T) {
	top := newMem(t, "top", 0)
	middle := newProbe(newMem(t, "middle", 0))
	middle.unavailable = true
	bottom := newMem(t, "bottom", 0)
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top}, {Tier: middle}, {Tier: bottom}}})
	want := []byte("under an unavailable tier")
	d := put(t, bottom, want)
	ctx := context.Background()

	info, err := s.Stat(ctx, d)
	if err != nil || info.Tier != "bottom" {
		t.Fatalf("Stat = %+v, %v; want a hit in bottom", info, err)
	}
	got, info, err := readAll(ctx, s, d)
	if err != nil || !bytes.Equal(got, want) || info.Tier != "bottom" {
		t.Fatalf("Open = %q, %+v, %v", got, info, err)
	}
	if !has(t, top, d) {
		t.Errorf("top not filled past the unavailable middle tier")
	}
	if n := middle.count("Put"); n != 0 {
		t.Errorf("the unavailable middle tier was offered %d Puts, want 0", n)
	}
	if n := middle.count("Open"); n == 0 {
		t.Errorf("the middle tier was never asked")
	}
	// A miss everywhere is still a miss, naming the skipped tier.
	_, err = s.Stat(ctx, blob.FromBytes([]byte("nowhere")))
	if !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("Stat of a missing blob = %v, want ErrNotFound", err)
	}
	// Only unavailable tiers: unavailable, not a miss.
	down := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: middle}}})
	if _, err := down.Stat(ctx, d); !errors.Is(err, blob.ErrUnavailable) || errors.Is(err, blob.ErrNotFound) {
		t.Errorf("Stat on a stack of one unavailable tier = %v, want ErrUnavailable", err)
	}
}

func TestStackLeaderCancelWaitersSucceed(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, _ := tiers.NewMetrics(reg)
	s, top, bottom := twoTiers(t, m)
	want, _ := tiertest.RandomBytes(5, 2<<20)
	d := put(t, bottom.Tier, want)
	bottom.gate = make(chan struct{})
	bottom.entered = make(chan struct{}, 10)

	lctx, cancel := context.WithCancel(context.Background())
	leaderErr := make(chan error, 1)
	go func() {
		_, _, err := readAll(lctx, s, d)
		leaderErr <- err
	}()
	<-bottom.entered // the flight is at the bottom tier

	const waiters = 10
	var wg sync.WaitGroup
	errs := make([]error, waiters)
	for i := range waiters {
		wg.Go(func() {
			got, _, err := readAll(context.Background(), s, d)
			if err == nil && !bytes.Equal(got, want) {
				err = errors.New("wrong bytes")
			}
			errs[i] = err
		})
	}
	waitFor(t, "10 waiters to join", func() bool {
		return metricValue(t, reg, tiers.MetricCollapsed, nil) == waiters
	})
	cancel()
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Errorf("leader after cancel = %v, want context.Canceled", err)
	}
	close(bottom.gate)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("waiter %d: %v", i, err)
		}
	}
	if n := bottom.count("Open"); n != 1 {
		t.Errorf("bottom opened %d times, want 1 (the flight survives its leader)", n)
	}
	if !has(t, top, d) {
		t.Errorf("top not filled")
	}
}

func TestStackFailedLeaderWaitersRetry(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, _ := tiers.NewMetrics(reg)
	s, _, bottom := twoTiers(t, m)
	want, _ := tiertest.RandomBytes(6, 256<<10)
	d := put(t, bottom.Tier, want)
	bottom.failOpens.Store(1)
	bottom.gate = make(chan struct{})
	bottom.entered = make(chan struct{}, 100)

	leaderErr := make(chan error, 1)
	go func() {
		_, _, err := readAll(context.Background(), s, d)
		leaderErr <- err
	}()
	<-bottom.entered
	const waiters = 10
	var wg sync.WaitGroup
	errs := make([]error, waiters)
	for i := range waiters {
		wg.Go(func() {
			got, _, err := readAll(context.Background(), s, d)
			if err == nil && !bytes.Equal(got, want) {
				err = errors.New("wrong bytes")
			}
			errs[i] = err
		})
	}
	waitFor(t, "10 waiters to join", func() bool {
		return metricValue(t, reg, tiers.MetricCollapsed, nil) == waiters
	})
	close(bottom.gate)
	if err := <-leaderErr; err == nil {
		t.Errorf("the leader whose bottom Open failed succeeded")
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("waiter %d: %v", i, err)
		}
	}
	if n := bottom.count("Open"); n != 2 {
		t.Errorf("bottom opened %d times, want 2 (the failed flight and one retry)", n)
	}
}

func TestStackWaiterLeavesAlone(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, _ := tiers.NewMetrics(reg)
	s, top, bottom := twoTiers(t, m)
	want, _ := tiertest.RandomBytes(7, 100<<10)
	d := put(t, bottom.Tier, want)
	bottom.gate = make(chan struct{})
	bottom.entered = make(chan struct{}, 10)

	leader := make(chan error, 1)
	go func() {
		got, _, err := readAll(context.Background(), s, d)
		if err == nil && !bytes.Equal(got, want) {
			err = errors.New("wrong bytes")
		}
		leader <- err
	}()
	<-bottom.entered
	wctx, cancel := context.WithCancel(context.Background())
	waiter := make(chan error, 1)
	go func() {
		_, _, err := s.Open(wctx, d)
		waiter <- err
	}()
	waitFor(t, "the waiter to join", func() bool { return metricValue(t, reg, tiers.MetricCollapsed, nil) == 1 })
	cancel()
	if err := <-waiter; !errors.Is(err, context.Canceled) {
		t.Errorf("waiter after its cancel = %v, want context.Canceled", err)
	}
	close(bottom.gate)
	if err := <-leader; err != nil {
		t.Errorf("leader = %v after a waiter left", err)
	}
	if !has(t, top, d) {
		t.Errorf("top not filled")
	}
}

func TestStackLocalViewNeverTouchesShared(t *testing.T) {
	local := newMem(t, "local", 0)
	shared := newProbe(newMem(t, "shared", 0))
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: local}, {Tier: shared, Shared: true}}})
	ctx := context.Background()
	onlyShared := put(t, shared.Tier, []byte("in the shared tier only"))
	k := blob.RefKey{Namespace: blob.NamespaceTag, Scope: "tenant", Name: "x"}
	if err := shared.Tier.PutRef(ctx, k, blob.Ref{Digest: onlyShared, Size: 23}); err != nil {
		t.Fatal(err)
	}

	// A full view is reading the shared tier right now (held at the gate).
	shared.gate = make(chan struct{})
	shared.entered = make(chan struct{}, 1)
	fullDone := make(chan error, 1)
	go func() {
		_, _, err := readAll(ctx, s, onlyShared)
		fullDone <- err
	}()
	<-shared.entered
	base := shared.total()

	lv := s.Local()
	if _, _, err := lv.Open(ctx, onlyShared); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("local Open of a shared-only blob = %v, want ErrNotFound (must not join the full view's flight)", err)
	}
	if _, err := lv.Stat(ctx, onlyShared); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("local Stat = %v, want ErrNotFound", err)
	}
	if _, err := lv.GetRef(ctx, k); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("local GetRef = %v, want ErrNotFound", err)
	}
	own := put(t, lv, []byte("anonymous upload"))
	if err := lv.PutRef(ctx, blob.RefKey{Namespace: "n", Name: "anon"}, blob.Ref{Digest: own, Size: 16}); err != nil {
		t.Errorf("local PutRef = %v", err)
	}
	if err := lv.DeleteRef(ctx, blob.RefKey{Namespace: "n", Name: "anon"}); err != nil {
		t.Errorf("local DeleteRef = %v", err)
	}
	if err := lv.Delete(ctx, own); err != nil {
		t.Errorf("local Delete = %v", err)
	}
	lv.Walk(ctx, func(blob.Info) error { return nil })
	lv.WalkRefs(ctx, "", func(blob.RefKey, blob.Ref) error { return nil })
	lv.Usage(ctx)
	lv.TierUsage(ctx)
	if n := shared.total(); n != base {
		t.Errorf("the local view made %d calls to the shared tier, want 0", n-base)
	}
	if has(t, shared.Tier, own) {
		t.Errorf("an upload through the local view reached the shared tier")
	}
	for _, e := range lv.Tiers() {
		if e.Shared {
			t.Errorf("Local().Tiers() lists shared tier %q", e.Tier.Name())
		}
	}
	close(shared.gate)
	if err := <-fullDone; err != nil {
		t.Errorf("full view read = %v", err)
	}
}

func TestStackPut(t *testing.T) {
	ctx := context.Background()
	small := []byte("small blob")
	big, _ := tiertest.RandomBytes(8, 2<<20)
	tests := []struct {
		desc     string
		topLimit int64
		content  []byte
		digest   blob.Digest // "" = the content's
		size     int64       // -1 = len(content)
		wantErr  error
		inTop    bool
		inBottom bool
	}{
		{"fits both", 0, small, "", -1, nil, true, true},
		{"declined by top", 1 << 20, big, "", -1, nil, false, true},
		{"wrong digest", 0, small, blob.FromBytes([]byte("other")), -1, blob.ErrMismatch, false, false},
		{"short content", 0, small, "", int64(len(small) + 5), blob.ErrMismatch, false, false},
		{"long content", 0, big, "", 1 << 20, blob.ErrMismatch, false, false},
		{"long small content", 0, small, "", int64(len(small) - 1), blob.ErrMismatch, false, false},
		{"short large content", 0, big[:1<<20], blob.FromBytes(big), int64(len(big)), blob.ErrMismatch, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			top := newMem(t, "top", tt.topLimit)
			bottom := newMem(t, "bottom", 0)
			s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top}, {Tier: bottom}}})
			d := tt.digest
			if d == "" {
				d = blob.FromBytes(tt.content)
			}
			size := tt.size
			if size < 0 {
				size = int64(len(tt.content))
			}
			err := s.Put(ctx, d, size, bytes.NewReader(tt.content))
			if (tt.wantErr == nil) != (err == nil) || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Fatalf("Put = %v, want %v", err, tt.wantErr)
			}
			if has(t, top, d) != tt.inTop || has(t, bottom, d) != tt.inBottom {
				t.Errorf("after Put: top %v bottom %v, want %v %v", has(t, top, d), has(t, bottom, d), tt.inTop, tt.inBottom)
			}
		})
	}
	t.Run("declined by every tier", func(t *testing.T) {
		s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: newMem(t, "a", 1024)}, {Tier: newMem(t, "b", 1024)}}})
		for range 2 { // the second time from the learned limits
			if err := s.Put(ctx, blob.FromBytes(big), int64(len(big)), bytes.NewReader(big)); !errors.Is(err, blob.ErrTooLarge) {
				t.Errorf("Put = %v, want ErrTooLarge", err)
			}
		}
	})
	t.Run("one tier unavailable", func(t *testing.T) {
		down := newProbe(newMem(t, "down", 0))
		down.unavailable = true
		up := newMem(t, "up", 0)
		s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: down}, {Tier: up}}})
		d := put(t, s, small)
		if !has(t, up, d) {
			t.Errorf("blob not stored in the available tier")
		}
		only := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: down}}})
		if err := only.Put(ctx, d, int64(len(small)), bytes.NewReader(small)); !errors.Is(err, blob.ErrUnavailable) {
			t.Errorf("Put into only unavailable tiers = %v, want ErrUnavailable", err)
		}
	})
	t.Run("64 concurrent puts of one digest", func(t *testing.T) {
		top, bottom := newMem(t, "top", 0), newMem(t, "bottom", 0)
		s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top}, {Tier: bottom}}})
		d := blob.FromBytes(big)
		var wg sync.WaitGroup
		for range 64 {
			wg.Go(func() {
				if err := s.Put(ctx, d, int64(len(big)), bytes.NewReader(big)); err != nil {
					t.Errorf("Put = %v", err)
				}
			})
		}
		wg.Wait()
		for _, tier := range []blob.Tier{top, bottom} {
			if got, _, err := readAll(ctx, tier, d); err != nil || !bytes.Equal(got, big) {
				t.Errorf("%s: %d bytes, %v", tier.Name(), len(got), err)
			}
		}
	})
}

func TestStackDelete(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		desc     string
		inTop    bool
		inBottom bool
		downTop  bool
		want     error
	}{
		{"in both", true, true, false, nil},
		{"in bottom only", false, true, false, nil},
		{"in neither", false, false, false, blob.ErrNotFound},
		{"top unavailable", false, true, true, blob.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			top := newProbe(newMem(t, "top", 0))
			bottom := newMem(t, "bottom", 0)
			s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top}, {Tier: bottom}}})
			b := []byte("to delete")
			d := blob.FromBytes(b)
			if tt.inTop {
				put(t, top.Tier, b)
			}
			if tt.inBottom {
				put(t, bottom, b)
			}
			top.unavailable = tt.downTop
			err := s.Delete(ctx, d)
			if (tt.want == nil) != (err == nil) || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("Delete = %v, want %v", err, tt.want)
			}
			if has(t, bottom, d) {
				t.Errorf("bottom still holds the blob")
			}
			top.unavailable = false
			if !tt.downTop && has(t, top.Tier, d) {
				t.Errorf("top still holds the blob")
			}
		})
	}
}

func TestStackRefs(t *testing.T) {
	ctx := context.Background()
	top := newProbe(newMem(t, "top", 0))
	bottom := newMem(t, "bottom", 0)
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top}, {Tier: bottom}}})
	d := blob.FromBytes([]byte("target"))
	k := blob.RefKey{Namespace: blob.NamespaceTag, Scope: "s", Name: "img:latest"}
	r := blob.Ref{Digest: d, Size: 6, MediaType: "application/vnd.oci.image.manifest.v1+json"}
	if err := bottom.PutRef(ctx, k, r); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetRef(ctx, k)
	if err != nil || got != r {
		t.Fatalf("GetRef = %+v, %v", got, err)
	}
	if wb, err := top.Tier.GetRef(ctx, k); err != nil || wb != r {
		t.Errorf("ref not written back into top: %+v, %v", wb, err)
	}
	other := blob.RefKey{Namespace: blob.NamespaceTag, Scope: "other", Name: "img:latest"}
	if _, err := s.GetRef(ctx, other); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("GetRef of another scope = %v, want ErrNotFound", err)
	}

	k2 := blob.RefKey{Namespace: blob.NamespaceProof, Scope: "s", Name: "p"}
	if err := s.PutRef(ctx, k2, r); err != nil {
		t.Fatal(err)
	}
	for _, tier := range []blob.Tier{top.Tier, bottom} {
		if _, err := tier.GetRef(ctx, k2); err != nil {
			t.Errorf("PutRef did not reach %s: %v", tier.Name(), err)
		}
	}
	// A revocation that cannot reach every tier is reported.
	top.unavailable = true
	if err := s.DeleteRef(ctx, k2); !errors.Is(err, blob.ErrUnavailable) {
		t.Errorf("DeleteRef with an unavailable tier = %v, want ErrUnavailable", err)
	}
	top.unavailable = false
	if err := s.DeleteRef(ctx, k2); err != nil {
		t.Errorf("DeleteRef = %v", err)
	}
	if _, err := s.GetRef(ctx, k2); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("GetRef after DeleteRef = %v", err)
	}
	if err := s.DeleteRef(ctx, k2); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("second DeleteRef = %v, want ErrNotFound", err)
	}
}

func TestStackWalkUnion(t *testing.T) {
	ctx := context.Background()
	top, bottom := newMem(t, "top", 0), newMem(t, "bottom", 0)
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top}, {Tier: bottom}}})
	both := put(t, top, []byte("both"))
	put(t, bottom, []byte("both"))
	onlyTop := put(t, top, []byte("top"))
	onlyBottom := put(t, bottom, []byte("bottom"))
	seen := map[blob.Digest]string{}
	err := s.Walk(ctx, func(info blob.Info) error {
		if _, dup := seen[info.Digest]; dup {
			t.Errorf("Walk reported %s twice", info.Digest)
		}
		seen[info.Digest] = info.Tier
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[blob.Digest]string{both: "top", onlyTop: "top", onlyBottom: "bottom"}
	if len(seen) != len(want) {
		t.Errorf("Walk saw %v, want %v", seen, want)
	}
	for d, tier := range want {
		if seen[d] != tier {
			t.Errorf("Walk: %s from %q, want %q", d, seen[d], tier)
		}
	}
	stop := errors.New("stop")
	if err := s.Walk(ctx, func(blob.Info) error { return stop }); err != stop {
		t.Errorf("Walk with a failing fn = %v, want fn's error", err)
	}

	k := blob.RefKey{Namespace: "n", Name: "k"}
	for _, tier := range []blob.Tier{top, bottom} {
		if err := tier.PutRef(ctx, k, blob.Ref{Digest: both, Size: 4}); err != nil {
			t.Fatal(err)
		}
	}
	if err := bottom.PutRef(ctx, blob.RefKey{Namespace: "n", Name: "k2"}, blob.Ref{Digest: both, Size: 4}); err != nil {
		t.Fatal(err)
	}
	refs := 0
	if err := s.WalkRefs(ctx, "n", func(blob.RefKey, blob.Ref) error { refs++; return nil }); err != nil || refs != 2 {
		t.Errorf("WalkRefs saw %d refs (%v), want 2", refs, err)
	}

	per, err := s.TierUsage(ctx)
	if err != nil || len(per) != 2 || per[0].Name != "top" || per[0].Usage.Blobs != 2 || per[1].Usage.Blobs != 2 {
		t.Errorf("TierUsage = %+v, %v", per, err)
	}
	sum, err := s.Usage(ctx)
	if err != nil || sum.Blobs != 4 || sum.Refs != 3 {
		t.Errorf("Usage = %+v, %v; want 4 blobs and 3 refs summed over tiers", sum, err)
	}
}

func TestStackInvalidInput(t *testing.T) {
	s, _, bottom := twoTiers(t, nil)
	ctx := context.Background()
	bad := blob.Digest("sha256:../../etc/passwd")
	if _, _, err := s.Open(ctx, bad); !errors.Is(err, blob.ErrInvalidDigest) {
		t.Errorf("Open(bad) = %v", err)
	}
	if _, err := s.Stat(ctx, bad); !errors.Is(err, blob.ErrInvalidDigest) {
		t.Errorf("Stat(bad) = %v", err)
	}
	if err := s.Put(ctx, bad, 1, bytes.NewReader([]byte("x"))); !errors.Is(err, blob.ErrInvalidDigest) {
		t.Errorf("Put(bad) = %v", err)
	}
	if n := bottom.total(); n != 0 {
		t.Errorf("invalid input reached the tiers %d times", n)
	}
}

// Many callers reading, abandoning and cancelling reads of one blob while
// the top tier is emptied now and then: every complete read is correct,
// the top tier only ever holds the right bytes, and nothing leaks.
func TestStackConcurrentChaos(t *testing.T) {
	s, top, bottom := twoTiers(t, nil)
	want, _ := tiertest.RandomBytes(9, 700<<10)
	d := put(t, bottom.Tier, want)
	before := runtime.NumGoroutine()

	const n = 48
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			rc, _, err := s.Open(ctx, d)
			if err != nil {
				t.Errorf("caller %d: Open = %v", i, err)
				return
			}
			defer rc.Close()
			switch i % 4 {
			case 0, 1: // read it all
				got, err := io.ReadAll(rc)
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("caller %d: %d bytes, %v", i, len(got), err)
				}
			case 2: // stop early
				io.ReadFull(rc, make([]byte, 10))
			case 3: // cancel mid-read
				io.ReadFull(rc, make([]byte, 300<<10))
				cancel()
				if _, err := io.ReadAll(rc); err == nil {
					// The last bytes may have been consumed already.
					break
				} else if !errors.Is(err, context.Canceled) {
					t.Errorf("caller %d: read after cancel = %v", i, err)
				}
			}
			if i%8 == 0 {
				top.Delete(context.Background(), d)
			}
		})
	}
	wg.Wait()
	waitGoroutines(t, before)
	waitFor(t, "bottom readers to close", func() bool { return bottom.openReaders.Load() == 0 })
	if has(t, top, d) {
		got, _, err := readAll(context.Background(), top, d)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("top holds wrong content: %d bytes, %v", len(got), err)
		}
	}
}

// Closing the root closes its tiers and fails every view; closing a view
// closes nothing.
func TestStackCloseOwnership(t *testing.T) {
	a, b := newMem(t, "a", 0), newMem(t, "b", 0)
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: a}, {Tier: b, Shared: true}}})
	ctx := context.Background()
	d := put(t, s, []byte("owned"))
	v := s.Local()
	if err := v.Close(); err != nil {
		t.Fatalf("view Close = %v", err)
	}
	if _, err := a.Stat(ctx, d); err != nil {
		t.Fatalf("a view's Close closed a tier: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if _, err := a.Stat(ctx, d); err == nil {
		t.Errorf("root Close left tier a open")
	}
	if _, err := v.Stat(ctx, d); !errors.Is(err, blob.ErrUnavailable) {
		t.Errorf("view Stat after root Close = %v, want ErrUnavailable", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}
