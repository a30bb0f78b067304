package memory

import (
	"context"
	"fmt"
	"time"

	"github.com/strata-oci/strata/blob"
)

// GetRef returns the ref under k and marks it recently used. An absent or
// expired ref wraps blob.ErrNotFound (an expired ref is dropped); an invalid
// key wraps blob.ErrInvalidRef.
func (t *Tier) GetRef(ctx context.Context, k blob.RefKey) (blob.Ref, error) {
	if err := ctx.Err(); err != nil {
		return blob.Ref{}, fmt.Errorf("memory tier %q: get ref %s: %w", t.name, k, err)
	}
	if err := k.Validate(); err != nil {
		return blob.Ref{}, fmt.Errorf("memory tier %q: get ref: %w", t.name, err)
	}
	now := time.Now()
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return blob.Ref{}, t.errClosed("get ref")
	}
	e, ok := t.refs.Peek(k)
	if ok && e.r.Expired(now) {
		t.removeRef(e)
		ok = false
	}
	if !ok {
		t.mu.Unlock()
		return blob.Ref{}, fmt.Errorf("memory tier %q: get ref %s: %w", t.name, k, blob.ErrNotFound)
	}
	t.refs.Get(k) // most recently used
	r := e.r
	t.mu.Unlock()
	return r, nil
}

// PutRef creates or replaces the ref under k. It does not require the blob
// to be present. A ref that has already expired replaces nothing: it removes
// any ref under k. Storing may evict least recently used refs to stay within
// MaxRefs and MaxRefBytes.
func (t *Tier) PutRef(ctx context.Context, k blob.RefKey, r blob.Ref) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memory tier %q: put ref %s: %w", t.name, k, err)
	}
	if err := k.Validate(); err != nil {
		return fmt.Errorf("memory tier %q: put ref: %w", t.name, err)
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("memory tier %q: put ref %s: %w", t.name, k, err)
	}
	cost := int64(refOverhead + len(k.Namespace) + len(k.Scope) + len(k.Name) + len(r.Digest) + len(r.MediaType))
	if cost > t.maxRefBytes {
		return fmt.Errorf("memory tier %q: put ref %s: %d bytes exceed the ref budget of %d: %w", t.name, k, cost, t.maxRefBytes, blob.ErrTooLarge)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return t.errClosed("put ref")
	}
	if old, ok := t.refs.Peek(k); ok {
		t.removeRef(old)
	}
	if r.Expired(time.Now()) {
		return nil
	}
	t.refs.Set(k, &refEntry{k: k, r: r, cost: cost})
	t.refBytes += cost
	for t.refs.Len() > t.maxRefs || t.refBytes > t.maxRefBytes {
		_, oldest, _ := t.refs.Oldest() // never the new ref: it alone fits both bounds
		t.removeRef(oldest)
	}
	return nil
}

// DeleteRef removes the ref under k; an absent or expired one wraps
// blob.ErrNotFound.
func (t *Tier) DeleteRef(ctx context.Context, k blob.RefKey) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memory tier %q: delete ref %s: %w", t.name, k, err)
	}
	if err := k.Validate(); err != nil {
		return fmt.Errorf("memory tier %q: delete ref: %w", t.name, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return t.errClosed("delete ref")
	}
	e, ok := t.refs.Peek(k)
	if !ok {
		return fmt.Errorf("memory tier %q: delete ref %s: %w", t.name, k, blob.ErrNotFound)
	}
	t.removeRef(e)
	if e.r.Expired(time.Now()) {
		return fmt.Errorf("memory tier %q: delete ref %s: %w", t.name, k, blob.ErrNotFound)
	}
	return nil
}

// WalkRefs calls fn for a snapshot of the unexpired refs in namespace (all
// namespaces when it is empty), without holding the tier's lock. It stops at
// fn's first error, or ctx's, and returns it.
func (t *Tier) WalkRefs(ctx context.Context, namespace string, fn func(blob.RefKey, blob.Ref) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memory tier %q: walk refs: %w", t.name, err)
	}
	type kv struct {
		k blob.RefKey
		r blob.Ref
	}
	now := time.Now()
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return t.errClosed("walk refs")
	}
	var list []kv
	for _, e := range t.refs.All() {
		switch {
		case e.r.Expired(now):
			t.removeRef(e)
		case namespace == "" || e.k.Namespace == namespace:
			list = append(list, kv{e.k, e.r})
		}
	}
	t.mu.Unlock()
	for _, x := range list {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("memory tier %q: walk refs: %w", t.name, err)
		}
		if x.r.Expired(time.Now()) {
			continue
		}
		if err := fn(x.k, x.r); err != nil {
			return err
		}
	}
	return nil
}

// removeRef drops e; the caller holds t.mu.
func (t *Tier) removeRef(e *refEntry) {
	t.refs.Remove(e.k)
	t.refBytes -= e.cost
}
