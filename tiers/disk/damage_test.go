package disk

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-oci/strata/blob"
)

// TestDamagedIndexIsRebuilt: whatever happened to the index files, Open
// neither panics nor fails: it moves the index aside, rebuilds it from the
// blob files (every blob adopted, the refs gone) and counts a rebuild.
func TestDamagedIndexIsRebuilt(t *testing.T) {
	// overwrite replaces every file matching glob in the index with what
	// content makes of its size.
	overwrite := func(glob string, content func(n int) []byte) func(*testing.T, string) {
		return func(t *testing.T, index string) {
			t.Helper()
			ms, _ := filepath.Glob(filepath.Join(index, glob))
			if len(ms) == 0 {
				t.Fatalf("no %s in %s", glob, index)
			}
			for _, m := range ms {
				fi, err := os.Stat(m)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(m, content(int(fi.Size())), 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	zeros := func(n int) []byte { return make([]byte, n) }
	garbage := func(n int) []byte { return randomBytes(99, max(n, 64)) }
	tests := []struct {
		desc   string
		damage func(t *testing.T, index string)
		// movedAside: the damaged index is kept as index.damaged-*.
		movedAside bool
	}{
		{"truncated table", func(t *testing.T, index string) {
			ms, _ := filepath.Glob(filepath.Join(index, "*.sst"))
			for _, m := range ms {
				if err := os.Truncate(m, 100); err != nil {
					t.Fatal(err)
				}
			}
		}, true},
		{"table cut short", func(t *testing.T, index string) {
			ms, _ := filepath.Glob(filepath.Join(index, "*.sst"))
			for _, m := range ms {
				fi, _ := os.Stat(m)
				if err := os.Truncate(m, fi.Size()/2); err != nil {
					t.Fatal(err)
				}
			}
		}, true},
		{"bytes flipped inside a table", func(t *testing.T, index string) {
			ms, _ := filepath.Glob(filepath.Join(index, "*.sst"))
			for _, m := range ms {
				b, err := os.ReadFile(m)
				if err != nil {
					t.Fatal(err)
				}
				for i := 100; i < 104 && i < len(b); i++ {
					b[i] ^= 0xff
				}
				if err := os.WriteFile(m, b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}, true},
		{"zeroed MANIFEST", overwrite("MANIFEST", zeros), true},
		{"MANIFEST deleted", func(t *testing.T, index string) { rm(t, filepath.Join(index, "MANIFEST")) }, true},
		{"zeroed KEYREGISTRY", overwrite("KEYREGISTRY", zeros), true},
		{"every file zeroed", overwrite("*", zeros), true},
		{"every file random garbage", overwrite("*", garbage), true},
		{"garbage memtable log", func(t *testing.T, index string) {
			writeFile(t, filepath.Join(index, "00007.mem"), randomBytes(98, 100_000))
		}, true},
		{"index deleted", func(t *testing.T, index string) {
			if err := os.RemoveAll(index); err != nil {
				t.Fatal(err)
			}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			ctx := context.Background()
			root := t.TempDir()
			var logs bytes.Buffer
			tr, err := Open(Config{Root: root})
			if err != nil {
				t.Fatal(err)
			}
			var blobs [][]byte
			for i := range 5 {
				blobs = append(blobs, randomBytes(uint64(200+i), 10_000*(i+1)))
				put(t, tr, blobs[i])
			}
			key := blob.RefKey{Namespace: blob.NamespaceTag, Name: "example.com/app:v1"}
			if err := tr.PutRef(ctx, key, blob.Ref{Digest: blob.FromBytes(blobs[0]), Size: int64(len(blobs[0]))}); err != nil {
				t.Fatal(err)
			}
			if err := tr.Close(); err != nil {
				t.Fatal(err)
			}
			tt.damage(t, filepath.Join(root, "index"))

			tr = openTier(t, Config{Root: root, Logger: newTextLogger(&logs)})
			if n := tr.IndexRebuilds(); n != 1 {
				t.Fatalf("IndexRebuilds() = %d, want 1; log:\n%s", n, logs.String())
			}
			if got := tr.Reconciled().OrphansAdopted; got != len(blobs) {
				t.Fatalf("adopted %d blobs, want %d", got, len(blobs))
			}
			for _, b := range blobs {
				mustRead(t, tr, blob.FromBytes(b), b)
			}
			if _, err := tr.GetRef(ctx, key); !errors.Is(err, blob.ErrNotFound) {
				t.Fatalf("ref after a rebuild: %v, want ErrNotFound (refs are lost)", err)
			}
			if !strings.Contains(logs.String(), "rebuilt from the blob files") {
				t.Errorf("no log line says the index was rebuilt:\n%s", logs.String())
			}
			aside, _ := filepath.Glob(filepath.Join(root, "index.damaged-*"))
			if tt.movedAside != (len(aside) == 1) {
				t.Errorf("moved-aside indexes %v, want one: %v", aside, tt.movedAside)
			}
			// The rebuilt index works and is clean on the next Open.
			put(t, tr, randomBytes(250, 3000))
			if err := tr.Close(); err != nil {
				t.Fatal(err)
			}
			tr = openTier(t, Config{Root: root})
			if tr.IndexRebuilds() != 0 || tr.Reconciled() != (ReconcileStats{}) {
				t.Fatalf("second open: rebuilds %d, reconciled %+v", tr.IndexRebuilds(), tr.Reconciled())
			}
			if u := usage(t, tr); u.Blobs != int64(len(blobs)+1) {
				t.Fatalf("usage %+v, want %d blobs", u, len(blobs)+1)
			}
		})
	}
}

// TestDamagedIndexesKept: of the damaged indexes moved aside, the two
// newest are kept.
func TestDamagedIndexesKept(t *testing.T) {
	root := t.TempDir()
	clock := &testClock{}
	seen := map[string]bool{}
	var made []string // in the order they were moved aside
	for i := range 4 {
		tr := openTier(t, Config{Root: root, Now: clock.Now})
		put(t, tr, randomBytes(uint64(300+i), 1000))
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(root, "index", "MANIFEST"), []byte("not a manifest"))
		tr = openTier(t, Config{Root: root, Now: clock.Now})
		if tr.IndexRebuilds() != 1 {
			t.Fatalf("round %d: no rebuild", i)
		}
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
		aside, _ := filepath.Glob(filepath.Join(root, "index.damaged-*"))
		for _, a := range aside {
			if !seen[a] {
				seen[a] = true
				made = append(made, a)
			}
		}
	}
	if len(made) != 4 {
		t.Fatalf("moved aside %v, want 4 distinct names", made)
	}
	kept, _ := filepath.Glob(filepath.Join(root, "index.damaged-*"))
	if strings.Join(kept, " ") != strings.Join(made[2:], " ") {
		t.Fatalf("kept %v, want the newest two of %v", kept, made)
	}
}

func newTextLogger(w *bytes.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
