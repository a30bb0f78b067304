package flight

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/strata-oci/strata/internal/safego"
)

// Concurrent callers of one key share one run of the work and its result;
// callers of another key run their own.
func TestDoCollapses(t *testing.T) {
	var g Group[int]
	ctx := context.Background()
	var runs atomic.Int64
	started, release := make(chan struct{}), make(chan struct{})
	joined := make(chan struct{}, 16)
	g.OnJoin = func() { joined <- struct{}{} }

	const n = 8
	var wg sync.WaitGroup
	vals, joins := make([]int, n), make([]bool, n)
	errs := make([]error, n)
	wg.Add(1)
	go func() {
		defer wg.Done()
		vals[0], joins[0], errs[0] = g.Do(ctx, "k", func(context.Context) (int, error) {
			runs.Add(1)
			close(started)
			<-release
			return 42, nil
		})
	}()
	<-started
	for i := 1; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vals[i], joins[i], errs[i] = g.Do(ctx, "k", func(context.Context) (int, error) {
				runs.Add(1)
				return -1, nil
			})
		}()
	}
	for i := 1; i < n; i++ {
		<-joined
	}
	other, otherJoined, err := g.Do(ctx, "other", func(context.Context) (int, error) { return 7, nil })
	if other != 7 || otherJoined || err != nil {
		t.Errorf("another key = %d, joined %v, %v; want its own run", other, otherJoined, err)
	}
	close(release)
	wg.Wait()
	if n := runs.Load(); n != 1 {
		t.Errorf("the work ran %d times for one key, want 1", n)
	}
	for i := range n {
		if vals[i] != 42 || errs[i] != nil || joins[i] != (i > 0) {
			t.Errorf("caller %d: %d, joined %v, %v; want 42, joined %v, nil", i, vals[i], joins[i], errs[i], i > 0)
		}
	}
}

// The work runs inside the flight: a caller that comes after a call ended
// starts a new one, which re-checks what the last one did.
func TestDoRechecksInside(t *testing.T) {
	var g Group[string]
	ctx := context.Background()
	var cache atomic.Pointer[string]
	var fills atomic.Int64
	get := func(ctx context.Context) (string, error) {
		if v := cache.Load(); v != nil {
			return *v, nil
		}
		fills.Add(1)
		v := "filled"
		cache.Store(&v)
		return v, nil
	}
	for i := range 3 {
		if v, _, err := g.Do(ctx, "k", get); v != "filled" || err != nil {
			t.Fatalf("call %d = %q, %v", i, v, err)
		}
	}
	if n := fills.Load(); n != 1 {
		t.Errorf("filled %d times, want 1 (later calls re-check inside)", n)
	}
}

// A caller whose context ends leaves alone: the work goes on for the
// others; when the last caller leaves, the work's context ends and the key
// is free for a fresh call.
func TestDoCallersLeaveAlone(t *testing.T) {
	var g Group[int]
	started := make(chan struct{})
	workDone := make(chan error, 1)
	release := make(chan struct{})
	joined := make(chan struct{}, 1)
	g.OnJoin = func() { joined <- struct{}{} }

	leaderCtx, leaderCancel := context.WithCancel(context.Background())
	leaderErr := make(chan error, 1)
	go func() {
		_, _, err := g.Do(leaderCtx, "k", func(ctx context.Context) (int, error) {
			close(started)
			select {
			case <-release:
				workDone <- nil
				return 1, nil
			case <-ctx.Done():
				workDone <- ctx.Err()
				return 0, ctx.Err()
			}
		})
		leaderErr <- err
	}()
	<-started
	waiterCtx, waiterCancel := context.WithCancel(context.Background())
	waiterRes := make(chan error, 1)
	go func() {
		v, _, err := g.Do(waiterCtx, "k", nil)
		if err == nil && v != 1 {
			err = fmt.Errorf("value %d, want 1", v)
		}
		waiterRes <- err
	}()
	<-joined
	leaderCancel()
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader = %v, want its own context's error", err)
	}
	close(release)
	if err := <-waiterRes; err != nil {
		t.Fatalf("waiter after the leader left = %v, want the work's result", err)
	}
	if err := <-workDone; err != nil {
		t.Fatalf("the work was cancelled while a caller waited: %v", err)
	}

	// Everyone leaves: the work is cancelled and the key freed.
	started2 := make(chan struct{})
	cancelled := make(chan struct{})
	go func() {
		g.Do(waiterCtx, "k2", func(ctx context.Context) (int, error) {
			close(started2)
			<-ctx.Done()
			close(cancelled)
			return 0, ctx.Err()
		})
	}()
	<-started2
	waiterCancel()
	<-cancelled
	if v, joined, err := g.Do(context.Background(), "k2", func(context.Context) (int, error) { return 5, nil }); v != 5 || joined || err != nil {
		t.Fatalf("after everyone left: %d, joined %v, %v; want a fresh run", v, joined, err)
	}
}

// Work that panics fails every caller with an error wrapping
// safego.ErrPanic instead of ending the process; the key is free again.
func TestDoPanicBecomesError(t *testing.T) {
	var g Group[int]
	ctx := context.Background()
	started, release := make(chan struct{}), make(chan struct{})
	joined := make(chan struct{}, 2)
	g.OnJoin = func() { joined <- struct{}{} }
	var wg sync.WaitGroup
	errs := make([]error, 3)
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _, errs[0] = g.Do(ctx, "k", func(context.Context) (int, error) {
			close(started)
			<-release
			var m map[string]int
			m["boom"]++ // a bug: assignment to a nil map
			return 1, nil
		})
	}()
	<-started
	for i := 1; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, errs[i] = g.Do(ctx, "k", func(context.Context) (int, error) { return 2, nil })
		}()
	}
	<-joined
	<-joined
	close(release)
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, safego.ErrPanic) {
			t.Errorf("caller %d: err = %v, want one wrapping safego.ErrPanic", i, err)
		}
	}
	if v, joinedAgain, err := g.Do(ctx, "k", func(context.Context) (int, error) { return 3, nil }); v != 3 || joinedAgain || err != nil {
		t.Fatalf("after the panic: %d, joined %v, %v; want a fresh run", v, joinedAgain, err)
	}
}

// Lead: the first caller leads, the others wait for its End; a leader that
// gives up tells them so (ErrLeaderGone), and the key is free at once for
// a waiter to lead.
func TestLead(t *testing.T) {
	tests := []struct {
		desc    string
		end     error
		wantErr error
	}{
		{desc: "leader succeeds: waiters share the outcome", end: nil},
		{desc: "leader fails: waiters share the failure", end: errors.New("registry said no"), wantErr: nil},
		{desc: "leader gives up: waiters may retry", end: fmt.Errorf("leader's context: %w", ErrLeaderGone), wantErr: ErrLeaderGone},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			var g Group[string]
			c, leader := g.Lead("k")
			if !leader {
				t.Fatal("first caller is not the leader")
			}
			w, wl := g.Lead("k")
			if wl || w != c {
				t.Fatal("second caller did not join the leader's call")
			}
			res := make(chan error, 1)
			go func() {
				v, err := w.Wait(context.Background())
				if err == nil && v != "done" {
					err = fmt.Errorf("value %q", v)
				}
				res <- err
			}()
			c.End("done", tt.end)
			c.End("again", errors.New("second End")) // ignored
			err := <-res
			want := tt.end
			if tt.wantErr != nil {
				want = tt.wantErr
			}
			if (want == nil) != (err == nil) || (want != nil && !errors.Is(err, want)) {
				t.Fatalf("waiter = %v, want %v", err, want)
			}
			if _, again := g.Lead("k"); !again {
				t.Fatal("the key is still taken after End")
			}
		})
	}
}

// A waiter whose context ends stops waiting without ending the call.
func TestLeadWaiterLeaves(t *testing.T) {
	var g Group[int]
	c, _ := g.Lead("k")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait = %v, want context.Canceled", err)
	}
	if _, leader := g.Lead("k"); leader {
		t.Fatal("a waiter leaving ended the call")
	}
	c.End(1, nil)
	if v, err := c.Wait(context.Background()); v != 1 || err != nil {
		t.Fatalf("Wait after End = %d, %v", v, err)
	}
}

// DoShared reports what singleflight calls shared: the leader and the
// callers that joined it get true once anyone joined; a lone caller, and a
// caller that left before the outcome, get false.
func TestDoShared(t *testing.T) {
	var g Group[int]
	ctx := context.Background()
	if v, shared, err := g.DoShared(ctx, "alone", func(context.Context) (int, error) { return 1, nil }); v != 1 || shared || err != nil {
		t.Fatalf("lone caller: %d, shared %v, %v; want 1, false, nil", v, shared, err)
	}

	started, release := make(chan struct{}), make(chan struct{})
	joined := make(chan struct{}, 2)
	g.OnJoin = func() { joined <- struct{}{} }
	leader := make(chan bool, 1)
	go func() {
		_, shared, _ := g.DoShared(ctx, "k", func(context.Context) (int, error) {
			close(started)
			<-release
			return 2, nil
		})
		leader <- shared
	}()
	<-started
	leftCtx, leave := context.WithCancel(ctx)
	left := make(chan bool, 1)
	go func() {
		_, shared, err := g.DoShared(leftCtx, "k", nil)
		left <- shared || !errors.Is(err, context.Canceled)
	}()
	waiter := make(chan bool, 1)
	go func() {
		v, shared, err := g.DoShared(ctx, "k", nil)
		waiter <- shared && v == 2 && err == nil
	}()
	<-joined
	<-joined
	leave()
	if <-left {
		t.Error("a caller that left got shared (or no context error)")
	}
	close(release)
	if !<-leader {
		t.Error("the leader of a call others joined: shared = false")
	}
	if !<-waiter {
		t.Error("a caller that joined: not shared, or not the outcome")
	}
}

// With Linger, work that every caller left runs on to its end, and a
// caller that comes meanwhile joins it instead of starting another.
func TestDoLinger(t *testing.T) {
	g := Group[int]{Linger: true}
	joined := make(chan struct{}, 1)
	g.OnJoin = func() { joined <- struct{}{} }
	started, release := make(chan struct{}), make(chan struct{})
	workErr := make(chan error, 1)
	var runs atomic.Int64
	work := func(ctx context.Context) (int, error) {
		runs.Add(1)
		close(started)
		<-release
		workErr <- ctx.Err()
		return 3, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	left := make(chan error, 1)
	go func() { _, _, err := g.Do(ctx, "k", work); left <- err }()
	<-started
	cancel()
	if err := <-left; !errors.Is(err, context.Canceled) {
		t.Fatalf("the caller that left = %v, want context.Canceled", err)
	}
	late := make(chan int, 1)
	go func() {
		v, j, err := g.Do(context.Background(), "k", work)
		if !j || err != nil {
			v = -1
		}
		late <- v
	}()
	select {
	case <-joined:
	case v := <-late:
		t.Fatalf("a caller after everyone left did not join the lingering work (%d)", v)
	}
	close(release)
	if v := <-late; v != 3 {
		t.Fatalf("a caller after everyone left: %d, want 3 from the lingering work (joined)", v)
	}
	if err := <-workErr; err != nil {
		t.Fatalf("the lingering work's context ended: %v", err)
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("the work ran %d times, want 1", n)
	}
}
