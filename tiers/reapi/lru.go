package reapi

import (
	"sync"

	"github.com/strata-oci/strata/internal/lru"
)

// cache is a mutex-guarded lru.Map that drops its least recently used
// entries beyond max. It is safe for concurrent use.
type cache[K comparable, V any] struct {
	mu  sync.Mutex
	max int
	m   lru.Map[K, V]
}

func newCache[K comparable, V any](max int) *cache[K, V] { return &cache[K, V]{max: max} }

func (c *cache[K, V]) get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m.Get(k)
}

// update sets k to fn(old, existed) atomically.
func (c *cache[K, V]) update(k K, fn func(old V, existed bool) V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old, existed := c.m.Peek(k)
	c.m.Set(k, fn(old, existed))
	for c.m.Len() > c.max {
		oldest, _, _ := c.m.Oldest()
		c.m.Remove(oldest)
	}
}

func (c *cache[K, V]) put(k K, v V) { c.update(k, func(V, bool) V { return v }) }

func (c *cache[K, V]) remove(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m.Remove(k)
}
