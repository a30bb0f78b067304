package disk

import (
	"os"
	"path/filepath"
	"testing"
)

// With NoEvict a tier opened over its budget, and written to, evicts
// nothing, and Forgotten names the rows Open dropped for missing files.
func TestNoEvictAndForgotten(t *testing.T) {
	root := t.TempDir()
	big := openTier(t, Config{Root: root})
	var want []string
	for i := range 8 {
		want = append(want, string(put(t, big, randomBytes(uint64(i), 16<<10))))
	}
	if err := big.Close(); err != nil {
		t.Fatal(err)
	}
	// One file vanishes while the root is closed.
	gone := want[3][len("sha256:"):]
	if err := os.Remove(filepath.Join(root, "blobs", "sha256", gone[:2], gone)); err != nil {
		t.Fatal(err)
	}
	small := openTier(t, Config{Root: root, Budget: 1 << 10, MaxBlob: 1 << 20, NoEvict: true})
	if f := small.Forgotten(); len(f) != 1 || string(f[0]) != want[3] {
		t.Fatalf("Forgotten() = %v, want [%s]", f, want[3])
	}
	put(t, small, randomBytes(99, 16<<10)) // a Put over budget wakes no eviction either
	if err := small.Close(); err != nil {
		t.Fatal(err)
	}
	again := openTier(t, Config{Root: root, NoEvict: true})
	if u := usage(t, again); u.Blobs != 8 {
		t.Fatalf("%d blobs after opening over budget with NoEvict, want 8 (7 kept + 1 put)", u.Blobs)
	}
	if f := again.Forgotten(); len(f) != 0 {
		t.Fatalf("Forgotten() after a clean reopen = %v", f)
	}
}
