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

// Concurrent readers of one origin view whose origin lacks a blob the tiers
// hold (another repository cached it): none may get the cached copy, even
// after giving up on fills that found nothing (found in review: the
// fallback read after three joins went top-down).
func TestOriginViewNeverServesOtherOriginsCopies(t *testing.T) {
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
			got, _, err := readAll(ctx, s.WithOrigin(src, "evil.example/app", nil, nil), d)
			if err == nil && bytes.Equal(got, want) {
				leaked.Add(1)
			}
		}()
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	if n := leaked.Load(); n > 0 {
		t.Fatalf("%d of 32 origin-view readers got the cached blob their origin does not hold (source opened %d times)", n, src.opens.Load())
	}
}
