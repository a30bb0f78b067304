package fetcher

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/safego"
	"github.com/strata-oci/strata/tiers/memory"
)

// TestGroupPanicBecomesError: work that panics on the group's goroutine
// fails every caller who waits for it with an error wrapping
// safego.ErrPanic, instead of ending the process; the key is free again.
func TestGroupPanicBecomesError(t *testing.T) {
	var g group[int]
	ctx := context.Background()
	started, release := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	errs := make([]error, 3)
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _, errs[0] = g.do(ctx, "k", func(context.Context) (int, error) {
			close(started)
			<-release
			var m map[string]int
			m["boom"]++ // a bug: assignment to a nil map
			return 1, nil
		})
	}()
	<-started
	joined := make(chan struct{}, 2)
	g.onJoin = func() { joined <- struct{}{} }
	for i := 1; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, errs[i] = g.do(ctx, "k", func(context.Context) (int, error) { return 2, nil })
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
	v, joinedAgain, err := g.do(ctx, "k", func(context.Context) (int, error) { return 3, nil })
	if v != 3 || joinedAgain || err != nil {
		t.Fatalf("after the panic: %d, joined %v, %v; want a fresh run", v, joinedAgain, err)
	}
}

// TestReadSmallBounds: a document is read whole into memory, so readSmall
// reads no more than maxDocumentSize bytes whatever size it is told,
// including an unknown (negative) one.
func TestReadSmallBounds(t *testing.T) {
	ctx := context.Background()
	mem := memory.New(memory.Config{Name: "memory", MaxBytes: 64 << 20, MaxBlobBytes: 32 << 20})
	t.Cleanup(func() { mem.Close() })
	big := bytes.Repeat([]byte("d"), maxDocumentSize+1)
	bd := blob.FromBytes(big)
	if err := mem.Put(ctx, bd, int64(len(big)), bytes.NewReader(big)); err != nil {
		t.Fatal(err)
	}
	small := []byte(`{"small":true}`)
	sd := blob.FromBytes(small)
	if err := mem.Put(ctx, sd, int64(len(small)), bytes.NewReader(small)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		desc    string
		d       blob.Digest
		size    int64
		wantErr error
	}{
		{desc: "declared above the cap", d: bd, size: int64(len(big)), wantErr: blob.ErrTooLarge},
		{desc: "declared 2^63-1", d: sd, size: 1<<63 - 1, wantErr: blob.ErrTooLarge},
		{desc: "unknown size, blob above the cap", d: bd, size: -1, wantErr: blob.ErrTooLarge},
		{desc: "unknown size, small blob", d: sd, size: -1},
		{desc: "right size", d: sd, size: int64(len(small))},
		{desc: "wrong size", d: sd, size: 3, wantErr: blob.ErrMismatch},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			data, _, err := readSmall(ctx, mem, tc.d, tc.size)
			if tc.wantErr == nil {
				if err != nil || !bytes.Equal(data, small) {
					t.Fatalf("got %d bytes, %v", len(data), err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
		})
	}
}
