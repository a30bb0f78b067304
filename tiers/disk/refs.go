package disk

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/strata-oci/strata/blob"
)

// GetRef implements blob.RefStore. An expired ref is a miss and is removed.
func (t *Tier) GetRef(ctx context.Context, k blob.RefKey) (blob.Ref, error) {
	if err := k.Validate(); err != nil {
		return blob.Ref{}, fmt.Errorf("disk %q: %w", t.cfg.Name, err)
	}
	if err := ctx.Err(); err != nil {
		return blob.Ref{}, fmt.Errorf("disk %q: get ref %s: %w", t.cfg.Name, k, err)
	}
	var r blob.Ref
	found := false
	err := t.view(func(txn *badger.Txn) error {
		var err error
		r, found, err = getRef(txn, k)
		return err
	})
	if err != nil {
		return blob.Ref{}, fmt.Errorf("disk %q: get ref %s: %w", t.cfg.Name, k, err)
	}
	if found && t.refHidden(refKey(k)) {
		found = false
	}
	if found && r.Expired(t.cfg.Now()) {
		t.removeExpiredRefs([]blob.RefKey{k})
		found = false
	}
	if !found {
		return blob.Ref{}, fmt.Errorf("disk %q: ref %s: %w", t.cfg.Name, k, blob.ErrNotFound)
	}
	return r, nil
}

func getRef(txn *badger.Txn, k blob.RefKey) (r blob.Ref, found bool, err error) {
	item, err := txn.Get(refKey(k))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return r, false, nil
	}
	if err != nil {
		return r, false, err
	}
	err = item.Value(func(v []byte) (err error) {
		r, err = decodeRef(v)
		return err
	})
	return r, err == nil, err
}

// PutRef implements blob.RefStore. The blob need not be present. On a full
// filesystem it fails with an error wrapping syscall.ENOSPC.
func (t *Tier) PutRef(ctx context.Context, k blob.RefKey, r blob.Ref) error {
	if err := k.Validate(); err != nil {
		return fmt.Errorf("disk %q: %w", t.cfg.Name, err)
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("disk %q: put ref %s: %w", t.cfg.Name, k, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("disk %q: put ref %s: %w", t.cfg.Name, k, err)
	}
	if err := t.indexWritable(); err != nil {
		return fmt.Errorf("disk %q: put ref %s: %w", t.cfg.Name, k, err)
	}
	err := t.update(func(txn *badger.Txn) error { return txn.Set(refKey(k), encodeRef(r)) })
	if err != nil {
		return fmt.Errorf("disk %q: put ref %s: %w", t.cfg.Name, k, err)
	}
	t.unhideRef(refKey(k))
	return nil
}

// DeleteRef implements blob.RefStore. Deleting an expired ref removes it
// and reports ErrNotFound, as GetRef would have. While the index cannot be
// written (a full filesystem) the ref is deleted in memory and from the
// index once it can be; if the process ends first, the ref comes back.
func (t *Tier) DeleteRef(ctx context.Context, k blob.RefKey) error {
	if err := k.Validate(); err != nil {
		return fmt.Errorf("disk %q: %w", t.cfg.Name, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("disk %q: delete ref %s: %w", t.cfg.Name, k, err)
	}
	live := false
	key := refKey(k)
	if t.refHidden(key) {
		return fmt.Errorf("disk %q: ref %s: %w", t.cfg.Name, k, blob.ErrNotFound)
	}
	var err error
	if t.indexWritable() != nil {
		err = t.view(func(txn *badger.Txn) error {
			r, found, err := getRef(txn, k)
			if err != nil || !found {
				return err
			}
			live = !r.Expired(t.cfg.Now())
			t.hideRef(key)
			return nil
		})
	} else {
		err = t.update(func(txn *badger.Txn) error {
			r, found, err := getRef(txn, k)
			if err != nil || !found {
				return err
			}
			live = !r.Expired(t.cfg.Now())
			return txn.Delete(key)
		})
	}
	if err != nil {
		return fmt.Errorf("disk %q: delete ref %s: %w", t.cfg.Name, k, err)
	}
	if !live {
		return fmt.Errorf("disk %q: ref %s: %w", t.cfg.Name, k, blob.ErrNotFound)
	}
	return nil
}

// WalkRefs implements blob.RefStore: fn sees every unexpired ref in
// namespace (all when empty), outside any index transaction. Expired refs
// met on the way are removed.
func (t *Tier) WalkRefs(ctx context.Context, namespace string, fn func(blob.RefKey, blob.Ref) error) error {
	prefix := refPrefix
	if namespace != "" {
		prefix += url.PathEscape(namespace) + "/"
	}
	_, err := t.scanRefs(ctx, prefix, fn)
	return err
}

// PurgeExpiredRefs removes every expired ref and returns how many it removed.
func (t *Tier) PurgeExpiredRefs(ctx context.Context) (int, error) {
	return t.scanRefs(ctx, refPrefix, nil)
}

func (t *Tier) countRefs(ctx context.Context) (int64, error) {
	var n int64
	_, err := t.scanRefs(ctx, refPrefix, func(blob.RefKey, blob.Ref) error { n++; return nil })
	return n, err
}

// scanRefs calls fn (if not nil) for the live refs under prefix, in
// batches, and removes the expired ones it meets.
func (t *Tier) scanRefs(ctx context.Context, prefix string, fn func(blob.RefKey, blob.Ref) error) (expired int, err error) {
	type kv struct {
		k blob.RefKey
		r blob.Ref
	}
	const batch = 512
	pfx := []byte(prefix)
	seek := pfx
	for {
		if err := ctx.Err(); err != nil {
			return expired, fmt.Errorf("disk %q: walk refs: %w", t.cfg.Name, err)
		}
		var got []kv
		var dead []blob.RefKey
		var last []byte
		now := t.cfg.Now()
		resume := len(seek) > len(pfx)
		err := t.view(func(txn *badger.Txn) error {
			opts := badger.DefaultIteratorOptions
			opts.Prefix = pfx
			opts.PrefetchSize = batch
			it := txn.NewIterator(opts)
			defer it.Close()
			n := 0
			for it.Seek(seek); it.ValidForPrefix(pfx) && n < batch; it.Next() {
				item := it.Item()
				if resume && string(item.Key()) == string(seek) {
					continue // the last key of the previous batch
				}
				n++
				last = item.KeyCopy(last[:0])
				k, err := blob.ParseRefKey(string(last[len(refPrefix):]))
				if err != nil {
					return err
				}
				var r blob.Ref
				if err := item.Value(func(v []byte) (err error) { r, err = decodeRef(v); return err }); err != nil {
					return fmt.Errorf("ref %s: %w", k, err)
				}
				if t.refHidden(last) {
					continue
				}
				if r.Expired(now) {
					dead = append(dead, k)
					continue
				}
				got = append(got, kv{k, r})
			}
			return nil
		})
		if err != nil {
			return expired, fmt.Errorf("disk %q: walk refs: %w", t.cfg.Name, err)
		}
		expired += t.removeExpiredRefs(dead)
		if last == nil {
			return expired, nil
		}
		for _, e := range got {
			if fn == nil {
				continue
			}
			if err := fn(e.k, e.r); err != nil {
				return expired, err
			}
		}
		seek = last
	}
}

// removeExpiredRefs deletes the refs in keys that are (still) expired and
// returns how many it removed. A ref replaced meanwhile is left alone.
func (t *Tier) removeExpiredRefs(keys []blob.RefKey) int {
	if len(keys) == 0 {
		return 0
	}
	if t.indexWritable() != nil {
		return 0 // a full filesystem: they are removed later
	}
	removed := 0
	now := t.cfg.Now()
	err := t.update(func(txn *badger.Txn) error {
		removed = 0
		for _, k := range keys {
			r, found, err := getRef(txn, k)
			if err != nil {
				return err
			}
			if found && r.Expired(now) {
				if err := txn.Delete(refKey(k)); err != nil {
					return err
				}
				removed++
			}
		}
		return nil
	})
	if err != nil {
		// Harmless: expired refs are never served, and a later read retries.
		t.cfg.Logger.Debug("disk tier: remove expired refs", "tier", t.cfg.Name, "err", err)
		return 0
	}
	return removed
}

func (t *Tier) now() int64 { return t.cfg.Now().UnixNano() }

func unixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}
