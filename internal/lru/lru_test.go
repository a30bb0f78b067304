package lru

import (
	"slices"
	"testing"
)

func keys(m *Map[string, int]) []string {
	var ks []string
	for k := range m.All() {
		ks = append(ks, k)
	}
	return ks
}

// Every operation leaves the entries in order of last use, most recent
// first; Peek and a miss change nothing.
func TestOrder(t *testing.T) {
	tests := []struct {
		desc string
		op   func(m *Map[string, int])
		want []string
	}{
		{"sets in order", func(*Map[string, int]) {}, []string{"c", "b", "a"}},
		{"get moves to front", func(m *Map[string, int]) { m.Get("a") }, []string{"a", "c", "b"}},
		{"peek keeps the order", func(m *Map[string, int]) { m.Peek("a") }, []string{"c", "b", "a"}},
		{"a miss keeps the order", func(m *Map[string, int]) { m.Get("x") }, []string{"c", "b", "a"}},
		{"set of a present key replaces and moves it", func(m *Map[string, int]) { m.Set("b", 20) }, []string{"b", "c", "a"}},
		{"remove the middle", func(m *Map[string, int]) { m.Remove("b") }, []string{"c", "a"}},
		{"remove the oldest", func(m *Map[string, int]) { m.Remove("a") }, []string{"c", "b"}},
		{"remove all", func(m *Map[string, int]) { m.Remove("a"); m.Remove("b"); m.Remove("c") }, nil},
		{"clear", func(m *Map[string, int]) { m.Clear() }, nil},
		{"remove while iterating", func(m *Map[string, int]) {
			for k := range m.All() {
				if k != "b" {
					m.Remove(k)
				}
			}
		}, []string{"b"}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			var m Map[string, int]
			m.Set("a", 1)
			m.Set("b", 2)
			m.Set("c", 3)
			tt.op(&m)
			if got := keys(&m); !slices.Equal(got, tt.want) || m.Len() != len(tt.want) {
				t.Fatalf("order %v (len %d), want %v", got, m.Len(), tt.want)
			}
			k, _, ok := m.Oldest()
			if ok != (len(tt.want) > 0) || (ok && k != tt.want[len(tt.want)-1]) {
				t.Fatalf("Oldest = %q, %v; want the last of %v", k, ok, tt.want)
			}
		})
	}
}

// Values are kept per key, and a user bounds the map by evicting Oldest.
func TestValuesAndEviction(t *testing.T) {
	var m Map[int, string]
	if _, ok := m.Get(1); ok {
		t.Fatal("Get on an empty map found something")
	}
	if _, _, ok := m.Oldest(); ok {
		t.Fatal("Oldest on an empty map found something")
	}
	for i := range 10 {
		m.Set(i, string(rune('a'+i)))
		m.Get(0) // 0 stays in use
		for m.Len() > 3 {
			k, _, _ := m.Oldest()
			m.Remove(k)
		}
	}
	for k, want := range map[int]string{0: "a", 8: "i", 9: "j"} {
		if v, ok := m.Peek(k); !ok || v != want {
			t.Errorf("Peek(%d) = %q, %v; want %q", k, v, ok, want)
		}
	}
	if v, ok := m.Remove(9); !ok || v != "j" {
		t.Errorf("Remove(9) = %q, %v", v, ok)
	}
	if _, ok := m.Remove(9); ok {
		t.Error("Remove of an absent key reported a value")
	}
}
