package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/strata-oci/strata/blob"
)

func TestBackgroundEvictionIsLRU(t *testing.T) {
	ctx := context.Background()
	clock := &testClock{}
	const n, size = 10, 100_000
	tr := openTier(t, Config{Budget: n * size, HighWatermark: 0.95, LowWatermark: 0.85, Now: clock.Now})
	var ds []blob.Digest
	var data [][]byte
	for i := 0; i < n-1; i++ { // 900 KB: under the high watermark
		b := randomBytes(uint64(60+i), size)
		ds = append(ds, put(t, tr, b))
		data = append(data, b)
	}
	if _, err := readAll(tr, ds[0]); err != nil { // 0 is now the most recent
		t.Fatal(err)
	}
	// A reader of 1, the least recently used, open across its eviction.
	rc, _, err := tr.Open(ctx, ds[1])
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	for i := 2; i < n-1; i++ {
		if _, err := readAll(tr, ds[i]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := readAll(tr, ds[0]); err != nil {
		t.Fatal(err)
	}
	// Access order now, oldest first: 1, 2..8, 0. Putting a tenth blob
	// passes 950 KB; eviction goes down to 850 KB: 1 and 2 go.
	last := randomBytes(70, size)
	ds = append(ds, put(t, tr, last))
	data = append(data, last)
	waitFor(t, "usage to drop to the low watermark", func() bool { return usage(t, tr).Bytes <= 850_000 })

	if u := usage(t, tr); u.Blobs != n-2 || u.Bytes != (n-2)*size || u.Budget != n*size {
		t.Fatalf("usage %+v, want %d blobs of %d bytes", u, n-2, size)
	}
	for i, d := range ds {
		if i == 1 || i == 2 {
			requireMiss(t, tr, d)
			continue
		}
		mustRead(t, tr, d, data[i])
	}
	// The reader opened before the eviction reads the whole blob.
	if got, err := io.ReadAll(rc); err != nil || len(got) != size {
		t.Fatalf("reader of an evicted blob: %d bytes, %v", len(got), err)
	}
}

func TestEvictTo(t *testing.T) {
	ctx := context.Background()
	clock := &testClock{}
	tr := openTier(t, Config{Now: clock.Now})
	var ds []blob.Digest
	for i := 0; i < 5; i++ {
		ds = append(ds, put(t, tr, randomBytes(uint64(80+i), 1000)))
	}
	tests := []struct {
		desc          string
		target        int64
		wantN         int
		wantFreed     int64
		wantRemaining int
	}{
		{"already under target", 10_000, 0, 0, 5},
		{"exactly at target", 5000, 0, 0, 5},
		{"down to two", 2500, 3, 3000, 2},
		{"down to zero", 0, 2, 2000, 0},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			n, freed, err := tr.EvictTo(ctx, tt.target)
			if err != nil || n != tt.wantN || freed != tt.wantFreed {
				t.Fatalf("EvictTo(%d) = %d, %d, %v; want %d, %d", tt.target, n, freed, err, tt.wantN, tt.wantFreed)
			}
			if u := usage(t, tr); u.Blobs != int64(tt.wantRemaining) {
				t.Fatalf("usage %+v", u)
			}
			// The survivors are the newest.
			for i, d := range ds {
				_, err := tr.Stat(ctx, d)
				if (i >= len(ds)-tt.wantRemaining) != (err == nil) {
					t.Fatalf("blob %d: Stat = %v", i, err)
				}
			}
		})
	}
}

func TestEvictOlderThan(t *testing.T) {
	ctx := context.Background()
	clock := &testClock{}
	tr := openTier(t, Config{Now: clock.Now})
	a := put(t, tr, []byte("a"))
	b := put(t, tr, []byte("bb"))
	c := put(t, tr, []byte("ccc"))
	if _, err := readAll(tr, a); err != nil { // a is now newer than c
		t.Fatal(err)
	}
	ci, err := tr.Stat(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	n, freed, err := tr.EvictOlderThan(ctx, ci.LastAccess)
	if err != nil || n != 1 || freed != 2 {
		t.Fatalf("EvictOlderThan = %d, %d, %v; want 1 blob (b), 2 bytes", n, freed, err)
	}
	requireMiss(t, tr, b)
	for _, d := range []blob.Digest{a, c} {
		if _, err := tr.Stat(ctx, d); err != nil {
			t.Fatalf("Stat(%s) = %v", d, err)
		}
	}
	if n, _, err := tr.EvictOlderThan(ctx, clock.Now().Add(time.Hour)); err != nil || n != 2 {
		t.Fatalf("EvictOlderThan(future) = %d, %v; want 2", n, err)
	}
	ctx2, cancel := context.WithCancel(ctx)
	cancel()
	put(t, tr, []byte("d"))
	if _, _, err := tr.EvictTo(ctx2, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("EvictTo with a cancelled context = %v", err)
	}
}

// waitFor polls cond until it holds; the deadline only guards against a
// hang and is far above the expected time.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestReadsTakeNoMutationLocks holds every lock that commits, deletes and
// eviction take, and reads anyway: an eviction (or a slow Put) can never
// stall a reader.
func TestReadsTakeNoMutationLocks(t *testing.T) {
	tr := openTier(t, Config{})
	data := randomBytes(95, 200_000)
	d := put(t, tr, data)
	tr.evictMu.Lock()
	tr.flushMu.Lock()
	for i := range tr.stripes {
		tr.stripes[i].Lock()
	}
	done := make(chan error, 1)
	go func() {
		if _, err := tr.Stat(context.Background(), d); err != nil {
			done <- err
			return
		}
		got, err := readAll(tr, d)
		if err == nil && len(got) != len(data) {
			err = errors.New("short read")
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a read blocked on a mutation lock")
	}
	for i := range tr.stripes {
		tr.stripes[i].Unlock()
	}
	tr.flushMu.Unlock()
	tr.evictMu.Unlock()
}

// TestAccessTimesFlushAtThreshold: once FlushThreshold accesses are
// pending, the flusher writes them to the index without waiting for its
// interval or Close.
func TestAccessTimesFlushAtThreshold(t *testing.T) {
	clock := &testClock{}
	tr := openTier(t, Config{FlushThreshold: 4, FlushInterval: time.Hour, Now: clock.Now})
	var ds []blob.Digest
	for i := 0; i < 4; i++ {
		ds = append(ds, put(t, tr, randomBytes(uint64(96+i), 100)))
	}
	want := map[string]int64{}
	for _, d := range ds {
		if _, err := readAll(tr, d); err != nil {
			t.Fatal(err)
		}
		info, err := tr.Stat(context.Background(), d) // pending or flushed: the newest
		if err != nil {
			t.Fatal(err)
		}
		want[d.Encoded()] = info.LastAccess.UnixNano()
	}
	stored := func() bool {
		for hex, at := range want {
			var r row
			if err := tr.view(func(txn *badger.Txn) (err error) { r, _, err = getRow(txn, hex); return err }); err != nil {
				t.Fatal(err)
			}
			if r.atime != at {
				return false
			}
		}
		return true
	}
	waitFor(t, "the flusher to write 4 access times", stored)
	tr.pendMu.Lock()
	n := len(tr.pending)
	tr.pendMu.Unlock()
	if n != 0 {
		t.Fatalf("%d access times still pending after the flush", n)
	}
}

// TestChurnUnderBudget puts, reads and deletes from several goroutines
// while background eviction runs, then checks the invariants: every read
// returned the right bytes or a miss, usage agrees with the listing and the
// files, and a reopen finds nothing to repair.
func TestChurnUnderBudget(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	const blobs, size = 40, 50_000
	tr, err := Open(Config{Root: root, Budget: 10 * size, FlushThreshold: 8})
	if err != nil {
		t.Fatal(err)
	}
	data := make([][]byte, blobs)
	ds := make([]blob.Digest, blobs)
	for i := range data {
		data[i] = randomBytes(uint64(200+i), size)
		ds[i] = blob.FromBytes(data[i])
	}
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for j := 0; j < 60; j++ {
				i := (w*17 + j*7) % blobs
				var err error
				switch j % 4 {
				case 0, 1:
					err = tr.Put(ctx, ds[i], size, bytes.NewReader(data[i]))
				case 2:
					var got []byte
					got, err = readAll(tr, ds[i])
					if err == nil && !bytes.Equal(got, data[i]) {
						err = fmt.Errorf("blob %d read back wrong", i)
					}
				case 3:
					if err = tr.Delete(ctx, ds[i]); errors.Is(err, blob.ErrNotFound) {
						err = nil
					}
				}
				if err != nil && !errors.Is(err, blob.ErrNotFound) {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitFor(t, "eviction to settle under the high watermark", func() bool { return usage(t, tr).Bytes <= tr.highBytes() })
	// A background pass goes on down to the low watermark; EvictTo waits
	// for it (passes hold evictMu) and, with usage under its target, does
	// nothing itself. After it, no pass runs: nothing is above high.
	if _, _, err := tr.EvictTo(ctx, tr.highBytes()); err != nil {
		t.Fatal(err)
	}

	var n, total int64
	if err := tr.Walk(ctx, func(info blob.Info) error {
		n++
		total += info.Size
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	files := 0
	for _, fan := range dirEntries(t, filepath.Join(root, "blobs", "sha256")) {
		files += len(dirEntries(t, filepath.Join(root, "blobs", "sha256", fan)))
	}
	if u := usage(t, tr); u.Blobs != n || u.Bytes != total || int64(files) != n {
		t.Fatalf("usage %+v, Walk %d blobs of %d bytes, %d files", u, n, total, files)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	tr = openTier(t, Config{Root: root})
	if rs := tr.Reconciled(); rs != (ReconcileStats{}) {
		t.Fatalf("reopen after churn repaired %+v", rs)
	}
	if u := usage(t, tr); u.Blobs != n || u.Bytes != total {
		t.Fatalf("usage after reopen %+v, want %d blobs of %d bytes", u, n, total)
	}
}

// TestAccessTimeVisibleWhileFlushing: an access time a flush is still
// writing is what Stat (and eviction) see, never the older indexed one.
func TestAccessTimeVisibleWhileFlushing(t *testing.T) {
	tr := openTier(t, Config{FlushInterval: time.Hour})
	d := put(t, tr, []byte("x"))
	before, err := tr.Stat(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	later := before.LastAccess.Add(time.Hour).UnixNano()
	// What flush does first: move the pending updates to the in-flight batch.
	tr.flushMu.Lock()
	tr.pendMu.Lock()
	tr.flushing = map[string]row{d.Encoded(): {size: 1, atime: later}}
	tr.pendMu.Unlock()
	got, err := tr.Stat(context.Background(), d)
	var listed int64
	werr := tr.Walk(context.Background(), func(info blob.Info) error { listed = info.LastAccess.UnixNano(); return nil })
	tr.pendMu.Lock()
	tr.flushing = nil
	tr.pendMu.Unlock()
	tr.flushMu.Unlock()
	if err != nil || got.LastAccess.UnixNano() != later || werr != nil || listed != later {
		t.Fatalf("during a flush Stat = %v, %v and Walk = %d, %v; want access time %d", got.LastAccess, err, listed, werr, later)
	}
}
