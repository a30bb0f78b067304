package ext4

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// prefetchLog records the Prefetch calls of an image's layers.
type prefetchLog struct {
	mu    sync.Mutex
	calls []int // layer indexes, in call order
	fail  error
}

// prefetchedLayer is a rawLayer that implements manifest.Prefetcher and
// records its prefetches.
type prefetchedLayer struct {
	*rawLayer
	idx int
	log *prefetchLog
}

func (l *prefetchedLayer) Prefetch(context.Context) error {
	l.log.mu.Lock()
	defer l.log.mu.Unlock()
	l.log.calls = append(l.log.calls, l.idx)
	return l.log.fail
}

// prefetchImage is an image of n layers that record their prefetches.
func prefetchImage(n int, log *prefetchLog) (*testImage, *testImage) {
	plain := &testImage{}
	img := &testImage{}
	for i := range n {
		raw := &rawLayer{data: tartest.New().File(fmt.Sprintf("l%d/f", i), tartest.Content(fmt.Sprint(i), 100_000)).Tar()}
		plain.layers = append(plain.layers, raw)
		img.layers = append(img.layers, &prefetchedLayer{rawLayer: raw, idx: i, log: log})
	}
	return img, plain
}

var _ manifest.Prefetcher = (*prefetchedLayer)(nil)

// TestConversionPrefetchesLowerLayers: a conversion prefetches every layer
// but the top two (which it reads ahead itself), top first, and the image
// is the one converted without prefetching. After the first failed
// Prefetch it prefetches no more (at most one per lane was under way) and
// still converts.
func TestConversionPrefetchesLowerLayers(t *testing.T) {
	ctx := context.Background()
	const n = 6
	log := &prefetchLog{}
	img, plain := prefetchImage(n, log)

	h := newStagedHost(t, t.TempDir(), nil, true)
	r, err := h.conv.Materialize(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitHashed(t, r)
	calls := slices.Clone(log.calls)
	slices.Sort(calls)
	if want := []int{0, 1, 2, 3}; !slices.Equal(calls, want) {
		t.Fatalf("prefetched layers %v, want %v (all but the top two)", log.calls, want)
	}
	// The lanes take layers top first: the first call is for one of the
	// first two taken, layers 3 and 2.
	if first := log.calls[0]; first != 3 && first != 2 {
		t.Errorf("prefetches in the order %v, want layer 3 or 2 first", log.calls)
	}

	other := newStagedHost(t, t.TempDir(), nil, true)
	want, err := other.conv.Materialize(ctx, plain, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitHashed(t, want)
	if r.Digest != want.Digest {
		t.Fatalf("image converted with prefetching %s, without %s", r.Digest, want.Digest)
	}

	failing := &prefetchLog{fail: errors.New("injected prefetch failure")}
	img2, _ := prefetchImage(n, failing)
	h2 := newStagedHost(t, t.TempDir(), nil, true)
	r2, err := h2.conv.Materialize(ctx, img2, nil)
	if err != nil {
		t.Fatalf("a conversion whose prefetches fail: %v", err)
	}
	waitHashed(t, r2)
	if r2.Digest != want.Digest {
		t.Fatalf("image converted after failed prefetches %s, want %s", r2.Digest, want.Digest)
	}
	if len(failing.calls) == 0 || len(failing.calls) > prefetchLanes {
		t.Fatalf("%d Prefetch calls after failures, want 1 to %d (one per lane under way)", len(failing.calls), prefetchLanes)
	}
}
