// Package lru keeps values in the order in which they were last used: a
// map with a recency list, for caches bounded by a count or by bytes.
//
// A Map does not evict on its own: its user removes the Oldest entries
// while its own bound (a number of entries, a byte total) is exceeded, so
// it decides what an entry costs and what to do with what it drops.
package lru

import "iter"

// Map maps keys to values in order of use, most recent first. The zero
// value is an empty map ready to use. A Map is not safe for concurrent
// use: its user holds a lock of its own.
type Map[K comparable, V any] struct {
	items map[K]*node[K, V]
	root  node[K, V] // sentinel of the ring: root.next is the most recent
}

type node[K comparable, V any] struct {
	key        K
	val        V
	prev, next *node[K, V]
}

func (m *Map[K, V]) init() {
	if m.items == nil {
		m.items = make(map[K]*node[K, V])
		m.root.prev, m.root.next = &m.root, &m.root
	}
}

// Len is the number of entries.
func (m *Map[K, V]) Len() int { return len(m.items) }

// Get returns k's value and makes k the most recently used.
func (m *Map[K, V]) Get(k K) (V, bool) {
	n, ok := m.items[k]
	if !ok {
		var zero V
		return zero, false
	}
	m.unlink(n)
	m.pushFront(n)
	return n.val, true
}

// Peek returns k's value without changing the order.
func (m *Map[K, V]) Peek(k K) (V, bool) {
	if n, ok := m.items[k]; ok {
		return n.val, true
	}
	var zero V
	return zero, false
}

// Set sets k to v and makes k the most recently used.
func (m *Map[K, V]) Set(k K, v V) {
	m.init()
	if n, ok := m.items[k]; ok {
		n.val = v
		m.unlink(n)
		m.pushFront(n)
		return
	}
	n := &node[K, V]{key: k, val: v}
	m.items[k] = n
	m.pushFront(n)
}

// Remove removes k and returns the value it had.
func (m *Map[K, V]) Remove(k K) (V, bool) {
	n, ok := m.items[k]
	if !ok {
		var zero V
		return zero, false
	}
	m.unlink(n)
	delete(m.items, k)
	return n.val, true
}

// Oldest returns the least recently used entry (ok false when empty).
func (m *Map[K, V]) Oldest() (k K, v V, ok bool) {
	if len(m.items) == 0 {
		return k, v, false
	}
	n := m.root.prev
	return n.key, n.val, true
}

// All yields the entries, most recently used first. The loop may Remove
// the entry it is given (and no other) while it runs.
func (m *Map[K, V]) All() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		if len(m.items) == 0 {
			return
		}
		for n := m.root.next; n != &m.root; {
			next := n.next
			if !yield(n.key, n.val) {
				return
			}
			n = next
		}
	}
}

// Clear removes every entry.
func (m *Map[K, V]) Clear() { *m = Map[K, V]{} }

func (m *Map[K, V]) pushFront(n *node[K, V]) {
	n.prev, n.next = &m.root, m.root.next
	n.next.prev = n
	m.root.next = n
}

func (m *Map[K, V]) unlink(n *node[K, V]) {
	n.prev.next = n.next
	n.next.prev = n.prev
	n.prev, n.next = nil, nil
}
