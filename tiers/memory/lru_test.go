package memory_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers/memory"
	"github.com/strata-oci/strata/tiers/tiertest"
)

// evictLog records OnEvict calls.
type evictLog struct {
	mu  sync.Mutex
	got []blob.Digest
}

func (l *evictLog) add(d blob.Digest, _ int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, d)
}

func (l *evictLog) take() []blob.Digest {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.got
	l.got = nil
	return out
}

func TestLRUEvictionOrder(t *testing.T) {
	ctx := context.Background()
	const blobSize = 3000
	blobs := map[string][]byte{}
	digests := map[string]blob.Digest{}
	for i, name := range []string{"A", "B", "C", "D", "E", "F"} {
		b, d := tiertest.RandomBytes(int64(i), blobSize)
		blobs[name], digests[name] = b, d
	}
	big, bigD := tiertest.RandomBytes(99, 10_000)
	type step struct {
		op      string // put, stat, open, delete, putbig
		blob    string
		evicted []string // blobs OnEvict reports for this step, in order
	}
	tests := []struct {
		desc   string
		steps  []step
		remain []string // blobs held at the end, most recent first
	}{
		{"fill to the budget evicts nothing",
			[]step{{"put", "A", nil}, {"put", "B", nil}, {"put", "C", nil}},
			[]string{"C", "B", "A"}},
		{"oldest goes first",
			[]step{{"put", "A", nil}, {"put", "B", nil}, {"put", "C", nil}, {"put", "D", []string{"A"}}, {"put", "E", []string{"B"}}},
			[]string{"E", "D", "C"}},
		{"Stat refreshes recency",
			[]step{{"put", "A", nil}, {"put", "B", nil}, {"put", "C", nil}, {"stat", "A", nil}, {"put", "D", []string{"B"}}},
			[]string{"D", "A", "C"}},
		{"Open refreshes recency",
			[]step{{"put", "A", nil}, {"put", "B", nil}, {"put", "C", nil}, {"open", "A", nil}, {"open", "B", nil}, {"put", "D", []string{"C"}}},
			[]string{"D", "B", "A"}},
		{"idempotent Put refreshes recency",
			[]step{{"put", "A", nil}, {"put", "B", nil}, {"put", "C", nil}, {"put", "A", nil}, {"put", "D", []string{"B"}}},
			[]string{"D", "A", "C"}},
		{"Delete frees budget without a callback",
			[]step{{"put", "A", nil}, {"put", "B", nil}, {"put", "C", nil}, {"delete", "B", nil}, {"put", "D", nil}},
			[]string{"D", "C", "A"}},
		{"a blob of the whole budget evicts everything else, oldest first",
			[]step{{"put", "A", nil}, {"put", "B", nil}, {"stat", "A", nil}, {"putbig", "", []string{"B", "A"}}},
			[]string{"big"}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			log := &evictLog{}
			tier := newTier(t, memory.Config{Budget: 10_000, OnEvict: log.add})
			name := map[blob.Digest]string{bigD: "big"}
			for n, d := range digests {
				name[d] = n
			}
			for i, s := range tt.steps {
				var err error
				switch s.op {
				case "put":
					err = tier.Put(ctx, digests[s.blob], blobSize, bytes.NewReader(blobs[s.blob]))
				case "putbig":
					err = tier.Put(ctx, bigD, int64(len(big)), bytes.NewReader(big))
				case "stat":
					_, err = tier.Stat(ctx, digests[s.blob])
				case "open":
					var rc io.ReadCloser
					rc, _, err = tier.Open(ctx, digests[s.blob])
					if err == nil {
						rc.Close()
					}
				case "delete":
					err = tier.Delete(ctx, digests[s.blob])
				}
				if err != nil {
					t.Fatalf("step %d %s %s: %v", i, s.op, s.blob, err)
				}
				var got []string
				for _, d := range log.take() {
					got = append(got, name[d])
				}
				if !slices.Equal(got, s.evicted) {
					t.Fatalf("step %d %s %s evicted %v, want %v", i, s.op, s.blob, got, s.evicted)
				}
			}
			var order []string
			var bytesHeld int64
			if err := tier.Walk(ctx, func(info blob.Info) error {
				order = append(order, name[info.Digest])
				bytesHeld += info.Size
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(order, tt.remain) {
				t.Errorf("held %v (most recent first), want %v", order, tt.remain)
			}
			u, err := tier.Usage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if u.Blobs != int64(len(tt.remain)) || u.Bytes != bytesHeld || u.Budget != 10_000 {
				t.Errorf("Usage = %+v, want %d blobs, %d bytes, budget 10000", u, len(tt.remain), bytesHeld)
			}
		})
	}
}

// TestEvictCallbackOutsideLock has OnEvict call back into the tier; with the
// lock held that would deadlock.
func TestEvictCallbackOutsideLock(t *testing.T) {
	ctx := context.Background()
	var tier *memory.Tier
	var calls int
	var problems []string
	tier = newTier(t, memory.Config{Budget: 2000, OnEvict: func(d blob.Digest, size int64) {
		calls++
		if _, err := tier.Stat(ctx, d); !errors.Is(err, blob.ErrNotFound) {
			problems = append(problems, fmt.Sprintf("Stat of evicted %s = %v, want ErrNotFound", d, err))
		}
		if size != 1000 {
			problems = append(problems, fmt.Sprintf("evicted size %d, want 1000", size))
		}
		if u, err := tier.Usage(ctx); err != nil || u.Bytes > 2000 {
			problems = append(problems, fmt.Sprintf("Usage in callback = %+v, %v", u, err))
		}
		k := blob.RefKey{Namespace: "evicted", Name: d.Encoded()}
		if err := tier.PutRef(ctx, k, blob.Ref{Digest: d, Size: size}); err != nil {
			problems = append(problems, fmt.Sprintf("PutRef in callback = %v", err))
		}
		// A Put from the callback may itself evict (and re-enter).
		small := []byte("put from the eviction callback")
		if err := tier.Put(ctx, blob.FromBytes(small), int64(len(small)), bytes.NewReader(small)); err != nil {
			problems = append(problems, fmt.Sprintf("Put in callback = %v", err))
		}
	}})
	for i := range 5 {
		b, _ := tiertest.RandomBytes(int64(i), 1000)
		tiertest.PutBytes(t, ctx, tier, b)
	}
	if calls < 3 {
		t.Errorf("OnEvict called %d times, want at least 3", calls)
	}
	for _, p := range problems {
		t.Error(p)
	}
	n := 0
	tier.WalkRefs(ctx, "evicted", func(blob.RefKey, blob.Ref) error { n++; return nil })
	if n != calls {
		t.Errorf("%d refs written from %d callbacks", n, calls)
	}
}

// failReader fails the test if it is read at all.
type failReader struct{ t *testing.T }

func (f failReader) Read([]byte) (int, error) {
	f.t.Error("Put read the stream of a blob it should decline from its size")
	return 0, io.ErrUnexpectedEOF
}

func TestPerBlobLimit(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		desc      string
		cfg       memory.Config
		size      int64
		tooLarge  bool
		wantLimit int64
	}{
		{"at the per-blob limit", memory.Config{Budget: 10_000, MaxBlob: 1000}, 1000, false, 1000},
		{"one byte over the per-blob limit", memory.Config{Budget: 10_000, MaxBlob: 1000}, 1001, true, 1000},
		{"far over the per-blob limit", memory.Config{Budget: 10_000, MaxBlob: 1000}, 1 << 40, true, 1000},
		{"limit above the budget is clamped to it", memory.Config{Budget: 5000, MaxBlob: 1 << 30}, 5001, true, 5000},
		{"default limit is 64 MiB", memory.Config{}, 64<<20 + 1, true, 64 << 20},
		{"default limit follows a smaller budget", memory.Config{Budget: 4096}, 4097, true, 4096},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			tier := newTier(t, tt.cfg)
			if !tt.tooLarge {
				b, d := tiertest.RandomBytes(1, int(tt.size))
				if err := tier.Put(ctx, d, tt.size, bytes.NewReader(b)); err != nil {
					t.Fatalf("Put of %d bytes = %v", tt.size, err)
				}
				return
			}
			d := blob.FromBytes([]byte(tt.desc))
			err := tier.Put(ctx, d, tt.size, failReader{t})
			if !errors.Is(err, blob.ErrTooLarge) {
				t.Fatalf("Put of %d bytes = %v, want ErrTooLarge", tt.size, err)
			}
			if !strings.Contains(err.Error(), fmt.Sprint(tt.wantLimit)) || !strings.Contains(err.Error(), d.Encoded()) {
				t.Errorf("error %q should name the digest and the limit %d", err, tt.wantLimit)
			}
			if _, err := tier.Stat(ctx, d); !errors.Is(err, blob.ErrNotFound) {
				t.Errorf("Stat after a declined Put = %v", err)
			}
		})
	}
}

func TestRefsLRUBounded(t *testing.T) {
	ctx := context.Background()
	d := blob.FromBytes([]byte("target"))
	key := func(i int) blob.RefKey { return blob.RefKey{Namespace: "n", Scope: "s", Name: fmt.Sprint(i)} }
	held := func(tier *memory.Tier) []string {
		var out []string
		tier.WalkRefs(ctx, "", func(k blob.RefKey, _ blob.Ref) error { out = append(out, k.Name); return nil })
		slices.Sort(out)
		return out
	}

	t.Run("count limit evicts the least recently used", func(t *testing.T) {
		tier := newTier(t, memory.Config{MaxRefs: 3})
		for i := range 3 {
			if err := tier.PutRef(ctx, key(i), blob.Ref{Digest: d, Size: 6}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := tier.GetRef(ctx, key(0)); err != nil { // 0 is now the most recent
			t.Fatal(err)
		}
		if err := tier.PutRef(ctx, key(3), blob.Ref{Digest: d, Size: 6}); err != nil {
			t.Fatal(err)
		}
		if got := held(tier); !slices.Equal(got, []string{"0", "2", "3"}) {
			t.Errorf("refs held = %v, want [0 2 3]", got)
		}
		if _, err := tier.GetRef(ctx, key(1)); !errors.Is(err, blob.ErrNotFound) {
			t.Errorf("GetRef of the evicted ref = %v", err)
		}
		// Overwriting does not count twice.
		for range 10 {
			if err := tier.PutRef(ctx, key(3), blob.Ref{Digest: d, Size: 6}); err != nil {
				t.Fatal(err)
			}
		}
		if u, _ := tier.Usage(ctx); u.Refs != 3 {
			t.Errorf("Usage.Refs = %d, want 3", u.Refs)
		}
	})

	t.Run("byte limit evicts the least recently used", func(t *testing.T) {
		tier := newTier(t, memory.Config{MaxRefBytes: 3100})
		media := strings.Repeat("m", 800)
		for i := range 5 {
			if err := tier.PutRef(ctx, key(i), blob.Ref{Digest: d, Size: 6, MediaType: media}); err != nil {
				t.Fatal(err)
			}
		}
		// Each ref costs 128 + 3 (key) + 71 (digest) + 800 = 1002 bytes: three fit.
		if got := held(tier); !slices.Equal(got, []string{"2", "3", "4"}) {
			t.Errorf("refs held = %v, want [2 3 4]", got)
		}
		err := tier.PutRef(ctx, key(9), blob.Ref{Digest: d, Size: 6, MediaType: strings.Repeat("m", 5000)})
		if !errors.Is(err, blob.ErrTooLarge) {
			t.Errorf("PutRef of a ref larger than the whole budget = %v, want ErrTooLarge", err)
		}
		if got := held(tier); !slices.Equal(got, []string{"2", "3", "4"}) {
			t.Errorf("after a declined PutRef refs held = %v, want [2 3 4]", got)
		}
	})

	t.Run("refs do not use the blob budget", func(t *testing.T) {
		tier := newTier(t, memory.Config{Budget: 1000})
		b, bd := tiertest.RandomBytes(5, 1000)
		tiertest.PutBytes(t, ctx, tier, b)
		for i := range 100 {
			if err := tier.PutRef(ctx, key(i), blob.Ref{Digest: bd, Size: 1000, MediaType: strings.Repeat("x", 100)}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := tier.Stat(ctx, bd); err != nil {
			t.Errorf("blob evicted by refs: %v", err)
		}
	})
}

// TestHotPathAllocations pins the cost of a hit: Stat allocates nothing,
// Open only its reader.
func TestHotPathAllocations(t *testing.T) {
	ctx := context.Background()
	tier := newTier(t, memory.Config{})
	b, d := tiertest.RandomBytes(1, 1024)
	tiertest.PutBytes(t, ctx, tier, b)
	if n := testing.AllocsPerRun(1000, func() {
		if _, err := tier.Stat(ctx, d); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Stat hit allocates %v times, want 0", n)
	}
	if n := testing.AllocsPerRun(1000, func() {
		rc, _, err := tier.Open(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		rc.Close()
	}); n > 1 {
		t.Errorf("Open hit allocates %v times, want at most 1 (the reader)", n)
	}
}

func TestLastAccess(t *testing.T) {
	ctx := context.Background()
	tier := newTier(t, memory.Config{})
	before := time.Now()
	d := tiertest.PutBytes(t, ctx, tier, []byte("x"))
	i1, err := tier.Stat(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if i1.LastAccess.Before(before) {
		t.Errorf("LastAccess %v is before the Put at %v", i1.LastAccess, before)
	}
	_, i2, err := tier.Open(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if i2.LastAccess.Before(i1.LastAccess) {
		t.Errorf("LastAccess went back from %v to %v", i1.LastAccess, i2.LastAccess)
	}
	tier.Walk(ctx, func(info blob.Info) error {
		if !info.LastAccess.Equal(i2.LastAccess) {
			t.Errorf("Walk LastAccess = %v, want %v", info.LastAccess, i2.LastAccess)
		}
		return nil
	})
}

// TestReadersSurviveEvictionAndClose: a reader keeps serving the bytes it
// was opened on after the blob is evicted or the tier is closed.
func TestReadersSurviveEvictionAndClose(t *testing.T) {
	ctx := context.Background()
	tier := newTier(t, memory.Config{Budget: 1000})
	a, ad := tiertest.RandomBytes(1, 1000)
	tiertest.PutBytes(t, ctx, tier, a)
	rc1, _, err := tier.Open(ctx, ad)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := tiertest.RandomBytes(2, 1000)
	tiertest.PutBytes(t, ctx, tier, b) // evicts a
	if _, err := tier.Stat(ctx, ad); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Stat of evicted blob = %v", err)
	}
	rc2, _, err := tier.Open(ctx, blob.FromBytes(b))
	if err != nil {
		t.Fatal(err)
	}
	tier.Close()
	for i, c := range []struct {
		rc   io.ReadCloser
		want []byte
	}{{rc1, a}, {rc2, b}} {
		got, err := io.ReadAll(c.rc)
		if err != nil || !bytes.Equal(got, c.want) {
			t.Errorf("reader %d: %d bytes, %v", i, len(got), err)
		}
		c.rc.Close()
		if _, err := c.rc.Read(make([]byte, 1)); err == nil || err == io.EOF {
			t.Errorf("reader %d: Read after Close = %v, want an error", i, err)
		}
	}
	if err := tier.Put(ctx, blob.FromBytes(a), 1000, bytes.NewReader(a)); !errors.Is(err, blob.ErrUnavailable) {
		t.Errorf("Put after Close = %v, want ErrUnavailable", err)
	}
}

// TestConcurrentPutsStoreOnce: concurrent Puts of one digest leave one copy
// and budget accounting exact.
func TestConcurrentPutsStoreOnce(t *testing.T) {
	ctx := context.Background()
	tier := newTier(t, memory.Config{})
	b, d := tiertest.RandomBytes(3, 100_000)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if err := tier.Put(ctx, d, int64(len(b)), bytes.NewReader(b)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if u, _ := tier.Usage(ctx); u.Blobs != 1 || u.Bytes != int64(len(b)) {
		t.Errorf("Usage = %+v, want 1 blob of %d bytes", u, len(b))
	}
}

func TestPutNilReader(t *testing.T) {
	ctx := context.Background()
	tier := newTier(t, memory.Config{})
	for _, size := range []int64{0, 5} {
		d := blob.FromBytes(make([]byte, size))
		if err := tier.Put(ctx, d, size, nil); err == nil || !strings.Contains(err.Error(), "nil reader") {
			t.Errorf("Put(size %d, nil reader) = %v, want a nil reader error", size, err)
		}
		if _, err := tier.Stat(ctx, d); !errors.Is(err, blob.ErrNotFound) {
			t.Errorf("Stat after Put with a nil reader = %v", err)
		}
	}
}
