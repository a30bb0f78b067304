package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestComponentsLogToStderr: what the host's components repair while
// blobctl holds the root (here: a disk index that was deleted, rebuilt from
// the blob files) is reported on stderr; --quiet keeps warnings and drops
// the Info reports.
func TestComponentsLogToStderr(t *testing.T) {
	f := newFixture(t, 4096, 1)
	must(t, f.args("fetch", f.ref)...)
	for _, tc := range []struct {
		desc  string
		flags []string
		want  []string
		not   []string
	}{
		{"default: Info and above", nil, []string{"level=WARN", "index missing; rebuilt from the blob files", "level=INFO", "disk tier reconciled"}, nil},
		{"--quiet: warnings only", []string{"--quiet"}, []string{"level=WARN", "index missing"}, []string{"level=INFO"}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if err := os.RemoveAll(filepath.Join(f.root, "index")); err != nil {
				t.Fatal(err)
			}
			r := blobctl(t, "", f.args(append(tc.flags, "fetch", f.ref)...)...)
			if r.code != 0 {
				t.Fatalf("fetch: exit %d\n%s", r.code, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("no %q on stderr:\n%s", w, r.stderr)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(r.stderr, n) {
					t.Errorf("%q on stderr:\n%s", n, r.stderr)
				}
			}
		})
	}
}
