package tiers_test

import (
	"bytes"
	"context"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers"
	"github.com/strata-oci/strata/tiers/tiertest"
)

// slowMiss is a source that lacks every blob and takes a while to say so.
type slowMiss struct {
	blob.Tier
	opens atomic.Int64
}

func (s *slowMiss) Open(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	s.opens.Add(1)
	time.Sleep(30 * time.Millisecond)
	return s.Tier.Open(ctx, d)
}

// Concurrent Fills of one key whose source lacks a blob the tiers hold
// (another repository cached it): none may get the cached copy, even after
// giving up on fills that found nothing (found in review: the fallback read
// after three joins went top-down).
func TestFillNeverServesOtherSourcesCopies(t *testing.T) {
	ctx := context.Background()
	top := newMem(t, "top", 0)
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top}}})
	want, _ := tiertest.RandomBytes(3, 256<<10)
	d := put(t, top, want) // another repository's blob, cached
	src := &slowMiss{Tier: newMem(t, "evil-registry", 0)}
	var wg sync.WaitGroup
	var leaked atomic.Int64
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, _, err := fillAll(ctx, s, "evil.example/app", src, d, len(want))
			if err == nil && bytes.Equal(got, want) {
				leaked.Add(1)
			}
		}()
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	if n := leaked.Load(); n > 0 {
		t.Fatalf("%d of 32 Fill callers got the cached blob their source does not hold (source opened %d times)", n, src.opens.Load())
	}
}

// Concurrent Fills of one digest with two keys, interleaved: the good
// key's source holds the blob (and is slow), the evil key's lacks it.
// Every good caller gets the blob; no evil caller ever gets a byte of it,
// though the good key's fills put it in the tiers meanwhile.
func TestConcurrentFillsNeverCrossKeys(t *testing.T) {
	ctx := context.Background()
	top := newMem(t, "top", 0)
	s := tiers.NewStack(tiers.StackConfig{Tiers: []tiers.Entry{{Tier: top}}})
	want, _ := tiertest.RandomBytes(8, 512<<10)
	goodTier := newMem(t, "good-registry", 0)
	d := put(t, goodTier, want)
	good := &slowMiss{Tier: goodTier} // slow, but holds the blob
	evil := &slowMiss{Tier: newMem(t, "evil-registry", 0)}

	var wg sync.WaitGroup
	var leaked, goodOK atomic.Int64
	const n = 32
	for i := range n {
		wg.Go(func() {
			if i%2 == 0 {
				got, _, err := fillAll(ctx, s, "good.example/app", good, d, len(want))
				if err == nil && bytes.Equal(got, want) {
					goodOK.Add(1)
				}
				return
			}
			got, _, _ := fillAll(ctx, s, "evil.example/app", evil, d, len(want))
			if len(got) > 0 {
				leaked.Add(1)
			}
		})
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	if n := leaked.Load(); n > 0 {
		t.Errorf("%d evil-key callers got bytes their source does not hold", n)
	}
	if got := goodOK.Load(); got != n/2 {
		t.Errorf("%d of %d good-key callers got the blob", got, n/2)
	}
}
