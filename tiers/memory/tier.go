// Package memory is the in-process blob.Tier: a byte-budgeted LRU of blobs
// and a bounded LRU of refs, both held in memory.
//
// Blobs above a per-blob limit are declined with blob.ErrTooLarge, so a stack
// passes them to the tiers below. Stored bytes are immutable: Open serves a
// reader over the stored slice without copying it, and Put verifies digest and
// size before a blob becomes visible.
package memory

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/ctxio"
	"github.com/strata-oci/strata/internal/lru"
)

// Defaults used for zero Config fields.
const (
	DefaultName        = "memory"
	DefaultBudget      = 256 << 20
	DefaultMaxBlob     = 64 << 20
	DefaultMaxRefs     = 100_000
	DefaultMaxRefBytes = 16 << 20
)

// Config configures a memory tier. Zero fields take the defaults above.
type Config struct {
	// Name identifies the tier in errors and Info.Tier (default "memory").
	Name string
	// Budget is the byte budget for blob content (default 256 MiB). When a
	// Put would exceed it, least recently used blobs are evicted.
	Budget int64
	// MaxBlob is the per-blob limit (default 64 MiB; never more than
	// Budget). Put of a larger blob returns blob.ErrTooLarge without
	// reading the stream. A Put in progress holds its buffer (at most
	// MaxBlob) outside the budget until it commits.
	MaxBlob int64
	// MaxRefs bounds the number of refs (default 100,000); beyond it the least
	// recently used refs are evicted.
	MaxRefs int
	// MaxRefBytes bounds the bytes held by refs, counted as the lengths of
	// namespace, scope, name, digest and media type plus a fixed per-ref
	// overhead (default 16 MiB); beyond it the least recently used refs are
	// evicted. Refs do not count toward Budget.
	MaxRefBytes int64
	// OnEvict, if set, is called with the digest and size of every blob
	// dropped to fit the byte budget (not for Delete). It is called after the
	// tier's lock is released, so it may call back into the tier; calls may
	// come from several goroutines at once.
	OnEvict func(d blob.Digest, size int64)
	// Logger receives a Debug line for every Put that evicted blobs to fit
	// the budget (how many, how many bytes). nil: nothing is logged.
	Logger *slog.Logger
}

// refOverhead approximates the bookkeeping bytes of one ref entry.
const refOverhead = 128

// putChunk bounds a single Read during Put, so cancellation is noticed
// between chunks even when the source would fill a huge buffer at once.
const putChunk = 1 << 20

// Tier is an in-memory blob.Tier. It is safe for concurrent use.
type Tier struct {
	name         string
	maxBytes     int64
	maxBlobBytes int64
	maxRefs      int
	maxRefBytes  int64
	onEvict      func(blob.Digest, int64)
	log          *slog.Logger

	mu       sync.Mutex
	closed   bool
	blobs    lru.Map[blob.Digest, *entry] // most recently used first
	bytes    int64
	refs     lru.Map[blob.RefKey, *refEntry]
	refBytes int64
}

var _ blob.Tier = (*Tier)(nil)

// entry is one stored blob; data is never modified after the entry is made.
type entry struct {
	d          blob.Digest
	data       []byte
	lastAccess time.Time
}

type refEntry struct {
	k    blob.RefKey
	r    blob.Ref
	cost int64
}

// New returns an empty memory tier.
func New(cfg Config) *Tier {
	t := &Tier{
		name:         cfg.Name,
		maxBytes:     cfg.Budget,
		maxBlobBytes: cfg.MaxBlob,
		maxRefs:      cfg.MaxRefs,
		maxRefBytes:  cfg.MaxRefBytes,
		onEvict:      cfg.OnEvict,
		log:          cfg.Logger,
	}
	if t.name == "" {
		t.name = DefaultName
	}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	if t.maxBytes <= 0 {
		t.maxBytes = DefaultBudget
	}
	if t.maxBlobBytes <= 0 {
		t.maxBlobBytes = min(DefaultMaxBlob, t.maxBytes)
	}
	t.maxBlobBytes = min(t.maxBlobBytes, t.maxBytes)
	if t.maxRefs <= 0 {
		t.maxRefs = DefaultMaxRefs
	}
	if t.maxRefBytes <= 0 {
		t.maxRefBytes = DefaultMaxRefBytes
	}
	return t
}

// Name returns the tier's name.
func (t *Tier) Name() string { return t.name }

func (t *Tier) errClosed(op string) error {
	return fmt.Errorf("memory tier %q: %s: %w: tier is closed", t.name, op, blob.ErrUnavailable)
}

func (t *Tier) notFound(op string, d blob.Digest) error {
	if err := blob.ValidateDigest(d); err != nil {
		return fmt.Errorf("memory tier %q: %s: %w", t.name, op, err)
	}
	return fmt.Errorf("memory tier %q: %s %s: %w", t.name, op, d, blob.ErrNotFound)
}

// Stat returns the blob's Info and marks it recently used. A miss wraps
// blob.ErrNotFound; a malformed digest blob.ErrInvalidDigest.
func (t *Tier) Stat(ctx context.Context, d blob.Digest) (blob.Info, error) {
	if err := ctx.Err(); err != nil {
		return blob.Info{}, fmt.Errorf("memory tier %q: stat %s: %w", t.name, d, err)
	}
	now := time.Now()
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return blob.Info{}, t.errClosed("stat")
	}
	e, ok := t.blobs.Get(d)
	if !ok {
		t.mu.Unlock()
		return blob.Info{}, t.notFound("stat", d)
	}
	e.lastAccess = now
	t.mu.Unlock()
	return blob.Info{Digest: d, Size: int64(len(e.data)), LastAccess: now, Tier: t.name}, nil
}

// Open returns a reader over the stored bytes (no copy) and marks the blob
// recently used. The reader is not safe for concurrent Reads; it fails with
// ctx's error once ctx is done, and with an error after Close. Memory does
// not rot, so the reader does not re-hash.
func (t *Tier) Open(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	if err := ctx.Err(); err != nil {
		return nil, blob.Info{}, fmt.Errorf("memory tier %q: open %s: %w", t.name, d, err)
	}
	now := time.Now()
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, blob.Info{}, t.errClosed("open")
	}
	e, ok := t.blobs.Get(d)
	if !ok {
		t.mu.Unlock()
		return nil, blob.Info{}, t.notFound("open", d)
	}
	e.lastAccess = now
	data := e.data
	t.mu.Unlock()
	return &reader{ctx: ctx, data: data}, blob.Info{Digest: d, Size: int64(len(data)), LastAccess: now, Tier: t.name}, nil
}

// Put stores size bytes from r under d after verifying them. It declines a
// blob larger than the per-blob limit with blob.ErrTooLarge before reading r,
// returns nil without reading r when the blob is already held, buffers at most
// size bytes, and stores nothing unless r yields exactly size bytes hashing to
// d (otherwise a *blob.MismatchError) and ctx stayed live throughout. Storing
// may evict least recently used blobs; OnEvict is called for them after the
// lock is released.
func (t *Tier) Put(ctx context.Context, d blob.Digest, size int64, r io.Reader) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memory tier %q: put %s: %w", t.name, d, err)
	}
	if err := blob.ValidateDigest(d); err != nil {
		return fmt.Errorf("memory tier %q: put: %w", t.name, err)
	}
	if size < 0 {
		return fmt.Errorf("memory tier %q: put %s: %w: negative size %d", t.name, d, blob.ErrInvalidDigest, size)
	}
	if size > t.maxBlobBytes {
		return fmt.Errorf("memory tier %q: put %s: %d bytes exceed the per-blob limit of %d: %w", t.name, d, size, t.maxBlobBytes, blob.ErrTooLarge)
	}
	now := time.Now()
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return t.errClosed("put")
	}
	if e, ok := t.blobs.Get(d); ok {
		e.lastAccess = now
		t.mu.Unlock()
		return nil
	}
	t.mu.Unlock()

	if r == nil {
		return fmt.Errorf("memory tier %q: put %s: nil reader", t.name, d)
	}
	data, err := readVerified(ctx, d, size, r)
	if err != nil {
		return fmt.Errorf("memory tier %q: put %s: %w", t.name, d, err)
	}

	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return t.errClosed("put")
	}
	if e, ok := t.blobs.Get(d); ok { // a concurrent Put won
		e.lastAccess = now
		t.mu.Unlock()
		return nil
	}
	t.blobs.Set(d, &entry{d: d, data: data, lastAccess: time.Now()})
	t.bytes += size
	var evicted []*entry
	for t.bytes > t.maxBytes {
		_, victim, _ := t.blobs.Oldest() // never the new entry: size <= maxBytes
		t.blobs.Remove(victim.d)
		t.bytes -= int64(len(victim.data))
		evicted = append(evicted, victim)
	}
	t.mu.Unlock()
	if len(evicted) > 0 {
		var freed int64
		for _, v := range evicted {
			freed += int64(len(v.data))
		}
		t.log.Debug("memory tier: evicted least recently used blobs to fit the budget", "tier", t.name, "blobs", len(evicted), "bytes", freed, "budget", t.maxBytes)
	}
	if t.onEvict != nil {
		for _, v := range evicted {
			t.onEvict(v.d, int64(len(v.data)))
		}
	}
	return nil
}

// readVerified reads exactly size bytes from r into a new slice through a
// blob.Verifier and confirms the stream ends there with digest d. It stops
// with ctx's error as soon as ctx is done.
//
// The buffer grows with the bytes that arrive rather than being sized by
// the declared size up front: a size is a claim (a manifest's), and a
// source that declares MaxBlob and sends a few bytes must not cost
// MaxBlob of memory, nor a size near MaxInt64 (under a tier configured
// without a practical limit) an allocation that fails. The final slice has
// exactly size bytes of capacity.
func readVerified(ctx context.Context, d blob.Digest, size int64, r io.Reader) ([]byte, error) {
	v := blob.NewVerifier(ctxio.NewReader[blob.Digest](ctx, r), d, size, nil)
	data := make([]byte, 0, min(size, putChunk))
	for int64(len(data)) < size {
		if len(data) == cap(data) {
			// Double, up to size; size - len > 0 here, so no overflow.
			grown := make([]byte, len(data), int(min(size, int64(len(data))+max(int64(len(data)), putChunk))))
			copy(grown, data)
			data = grown
		}
		// At most putChunk bytes a Read, so a cancelled ctx is noticed
		// promptly (each Read checks it first).
		n, err := v.Read(data[len(data):min(cap(data), len(data)+putChunk)])
		data = data[:len(data)+n]
		if err == io.EOF && int64(len(data)) == size {
			break // the last bytes came with a verified end
		}
		if err != nil {
			// A short stream is a *MismatchError from the Verifier, which
			// returns io.EOF only at the declared size.
			return nil, err
		}
	}
	// Confirm the end of the stream: the Verifier returns io.EOF only after
	// the digest matched, and a mismatch for one byte too many.
	var one [1]byte
	for tries := 0; ; tries++ {
		n, err := v.Read(one[:])
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if n == 0 && tries >= 100 {
			return nil, io.ErrNoProgress
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return data, nil
}

// Delete removes the blob; a miss wraps blob.ErrNotFound. OnEvict is not
// called.
func (t *Tier) Delete(ctx context.Context, d blob.Digest) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memory tier %q: delete %s: %w", t.name, d, err)
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return t.errClosed("delete")
	}
	e, ok := t.blobs.Remove(d)
	if !ok {
		t.mu.Unlock()
		return t.notFound("delete", d)
	}
	t.bytes -= int64(len(e.data))
	t.mu.Unlock()
	return nil
}

// Walk calls fn for a snapshot of the blobs held when Walk started, most
// recently used first, without holding the tier's lock (fn may call into the
// tier). It stops at fn's first error, or ctx's, and returns it.
func (t *Tier) Walk(ctx context.Context, fn func(blob.Info) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memory tier %q: walk: %w", t.name, err)
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return t.errClosed("walk")
	}
	infos := make([]blob.Info, 0, t.blobs.Len())
	for _, e := range t.blobs.All() {
		infos = append(infos, blob.Info{Digest: e.d, Size: int64(len(e.data)), LastAccess: e.lastAccess, Tier: t.name})
	}
	t.mu.Unlock()
	for _, info := range infos {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("memory tier %q: walk: %w", t.name, err)
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Usage reports the blobs, bytes and refs held and the byte budget. Refs
// may include expired ones not yet pruned (GetRef and WalkRefs prune them).
func (t *Tier) Usage(ctx context.Context) (blob.Usage, error) {
	if err := ctx.Err(); err != nil {
		return blob.Usage{}, fmt.Errorf("memory tier %q: usage: %w", t.name, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return blob.Usage{}, t.errClosed("usage")
	}
	return blob.Usage{Blobs: int64(t.blobs.Len()), Bytes: t.bytes, Refs: int64(t.refs.Len()), Budget: t.maxBytes}, nil
}

// Close drops everything the tier holds. Later calls fail with an error
// wrapping blob.ErrUnavailable; readers opened before Close keep working.
// Closing twice is a no-op.
func (t *Tier) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	t.blobs.Clear()
	t.refs.Clear()
	t.bytes, t.refBytes = 0, 0
	return nil
}
