package disk

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/strata-oci/strata/blob"
)

func TestReconcile(t *testing.T) {
	keep := randomBytes(20, 5000)
	keepD := blob.FromBytes(keep)
	tests := []struct {
		desc string
		// damage runs on a closed root that holds keep and victim.
		damage func(t *testing.T, root string, victim []byte)
		want   ReconcileStats
		// victimStays says whether victim is still served afterwards.
		victimStays bool
	}{
		{"clean", func(*testing.T, string, []byte) {}, ReconcileStats{}, true},
		{"leftover temp files", func(t *testing.T, root string, _ []byte) {
			writeFile(t, filepath.Join(root, "tmp", "0123456789abcdef-1234"), []byte("partial"))
			writeFile(t, filepath.Join(root, "tmp", "other"), nil)
		}, ReconcileStats{TempRemoved: 2}, true},
		{"row whose file is missing", func(t *testing.T, root string, v []byte) {
			rm(t, blobPath(root, v))
		}, ReconcileStats{RowsForgotten: 1}, false},
		{"row whose file has the wrong size", func(t *testing.T, root string, v []byte) {
			if err := os.Truncate(blobPath(root, v), 10); err != nil {
				t.Fatal(err)
			}
		}, ReconcileStats{RowsForgotten: 1, OrphansRemoved: 1}, false},
		{"row whose path is a directory", func(t *testing.T, root string, v []byte) {
			rm(t, blobPath(root, v))
			if err := os.Mkdir(blobPath(root, v), 0o700); err != nil {
				t.Fatal(err)
			}
		}, ReconcileStats{RowsForgotten: 1, OrphansRemoved: 1}, false},
		{"orphan file with good content is adopted", func(t *testing.T, root string, _ []byte) {
			b := randomBytes(21, 70_000)
			writeFile(t, blobPath(root, b), b)
		}, ReconcileStats{OrphansAdopted: 1}, true},
		{"orphan file with bad content is removed", func(t *testing.T, root string, _ []byte) {
			b := randomBytes(22, 70_000)
			p := blobPath(root, b)
			b[0] ^= 1
			writeFile(t, p, b)
		}, ReconcileStats{OrphansRemoved: 1}, true},
		{"junk names in the blob tree are removed", func(t *testing.T, root string, _ []byte) {
			writeFile(t, filepath.Join(root, "blobs", "sha256", "ab", "not-a-digest"), nil)
			b := randomBytes(23, 10)
			h := blob.FromBytes(b).Encoded()
			// A valid digest filed under the wrong fan-out directory.
			wrong := "00"
			if h[:2] == "00" {
				wrong = "01"
			}
			writeFile(t, filepath.Join(root, "blobs", "sha256", wrong, h), b)
			writeFile(t, filepath.Join(root, "blobs", "sha256", "zz"), nil)
		}, ReconcileStats{OrphansRemoved: 3}, true},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			ctx := context.Background()
			root := t.TempDir()
			victim := randomBytes(24, 100_000)
			tr, err := Open(Config{Root: root})
			if err != nil {
				t.Fatal(err)
			}
			put(t, tr, keep)
			victimD := put(t, tr, victim)
			if err := tr.Close(); err != nil {
				t.Fatal(err)
			}
			tt.damage(t, root, victim)

			tr = openTier(t, Config{Root: root})
			if got := tr.Reconciled(); got != tt.want {
				t.Fatalf("Reconciled() = %+v, want %+v", got, tt.want)
			}
			mustRead(t, tr, keepD, keep)
			if tt.victimStays {
				mustRead(t, tr, victimD, victim)
			} else {
				requireMiss(t, tr, victimD)
			}
			if left := dirEntries(t, filepath.Join(root, "tmp")); len(left) != 0 {
				t.Fatalf("temp files left: %v", left)
			}
			// Usage agrees with a listing, and every listed blob reads back.
			var n, bytes int64
			err = tr.Walk(ctx, func(info blob.Info) error {
				n++
				bytes += info.Size
				_, err := readAll(tr, info.Digest)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if u := usage(t, tr); u.Blobs != n || u.Bytes != bytes {
				t.Fatalf("Usage %+v, Walk found %d blobs of %d bytes", u, n, bytes)
			}
			// Nothing is left to repair.
			if err := tr.Close(); err != nil {
				t.Fatal(err)
			}
			tr = openTier(t, Config{Root: root})
			if got := tr.Reconciled(); got != (ReconcileStats{}) {
				t.Fatalf("second reopen repaired %+v", got)
			}
		})
	}
}

func blobPath(root string, b []byte) string {
	h := blob.FromBytes(b).Encoded()
	return filepath.Join(root, "blobs", "sha256", h[:2], h)
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func rm(t *testing.T, p string) {
	t.Helper()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
}
