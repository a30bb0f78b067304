package reapi

import (
	"container/list"
	"sync"
)

// lru is a bounded, mutex-guarded map that drops its least recently used
// entries beyond max. It is safe for concurrent use.
type lru[K comparable, V any] struct {
	mu    sync.Mutex
	max   int
	order *list.List // front = most recent; values are *lruEntry
	items map[K]*list.Element
}

type lruEntry[K comparable, V any] struct {
	key K
	val V
}

func newLRU[K comparable, V any](max int) *lru[K, V] {
	return &lru[K, V]{max: max, order: list.New(), items: make(map[K]*list.Element)}
}

func (c *lru[K, V]) get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		c.order.MoveToFront(e)
		return e.Value.(*lruEntry[K, V]).val, true
	}
	var zero V
	return zero, false
}

// update sets k to fn(old, existed) atomically.
func (c *lru[K, V]) update(k K, fn func(old V, existed bool) V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		ent := e.Value.(*lruEntry[K, V])
		ent.val = fn(ent.val, true)
		c.order.MoveToFront(e)
		return
	}
	var zero V
	c.items[k] = c.order.PushFront(&lruEntry[K, V]{key: k, val: fn(zero, false)})
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.items, last.Value.(*lruEntry[K, V]).key)
	}
}

func (c *lru[K, V]) put(k K, v V) { c.update(k, func(V, bool) V { return v }) }

func (c *lru[K, V]) remove(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		c.order.Remove(e)
		delete(c.items, k)
	}
}
