package disk

import (
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/strata-oci/strata/blob"
)

// ReconcileStats reports what Open repaired. After a clean Close all are 0.
type ReconcileStats struct {
	// TempRemoved counts leftover temp files of interrupted Puts.
	TempRemoved int
	// RowsForgotten counts index rows whose file was missing or had the
	// wrong size (or was not a regular file).
	RowsForgotten int
	// OrphansAdopted counts blob files without a row whose content hashed
	// to their name: they were committed but their row was lost (a machine
	// crash before the index reached disk), and are indexed again.
	OrphansAdopted int
	// OrphansRemoved counts files in the blob tree that were not a valid
	// blob: wrong name, not a regular file, or content that does not hash
	// to the name.
	OrphansRemoved int
}

// reconcile makes the index and the files agree; it runs in Open before the
// tier is shared, and sets the usage counters.
func (t *Tier) reconcile() (ReconcileStats, error) {
	var st ReconcileStats

	// 1. Temp files: any left belong to Puts that never committed.
	ents, err := os.ReadDir(t.tmpDir)
	if err != nil {
		return st, err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(t.tmpDir, e.Name())); err != nil {
			return st, err
		}
		st.TempRemoved++
	}

	// 2. Rows: forget those whose file is gone or has the wrong size.
	var blobs, bytes int64
	var forget []string
	err = t.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = []byte(blobPrefix)
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			hex := string(item.Key()[len(blobPrefix):])
			var r row
			err := item.Value(func(v []byte) (err error) { r, err = decodeRow(v); return err })
			if err != nil || blob.ValidateDigest(blob.Digest("sha256:"+hex)) != nil {
				forget = append(forget, hex)
				continue
			}
			fi, err := os.Lstat(t.path(hex))
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			if err != nil || !fi.Mode().IsRegular() || fi.Size() != r.size {
				forget = append(forget, hex)
				continue
			}
			blobs++
			bytes += r.size
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	readOnly := t.mode.Load() == modeReadOnly
	if readOnly {
		// A full filesystem: forgotten in memory, and on disk once the
		// index can be written (or by the next Open).
		for _, hex := range forget {
			t.hideRow(hex)
		}
	} else if err := t.writeBatch(func(wb *badger.WriteBatch) error {
		for _, hex := range forget {
			if err := wb.Delete(blobKey(hex)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return st, err
	}
	st.RowsForgotten = len(forget)
	t.forgotten = forget

	// 3. Files: adopt those without a row that hash to their name; remove
	// everything else that is not a blob.
	var adopt []row
	var adoptHex []string
	fans, err := os.ReadDir(t.blobDir)
	if err != nil {
		return st, err
	}
	for _, fan := range fans {
		dir := filepath.Join(t.blobDir, fan.Name())
		if !fan.IsDir() || !isHex(fan.Name(), 2) {
			if err := os.RemoveAll(dir); err != nil {
				return st, err
			}
			st.OrphansRemoved++
			continue
		}
		files, err := os.ReadDir(dir)
		if err != nil {
			return st, err
		}
		for _, e := range files {
			name := e.Name()
			p := filepath.Join(dir, name)
			if !e.Type().IsRegular() || !isHex(name, 64) || name[:2] != fan.Name() {
				if err := os.RemoveAll(p); err != nil {
					return st, err
				}
				st.OrphansRemoved++
				continue
			}
			var found bool
			if err := t.db.View(func(txn *badger.Txn) (err error) {
				_, found, err = getRow(txn, name)
				return err
			}); err != nil {
				return st, err
			}
			if found || readOnly {
				continue // read-only: adopted by an Open with room
			}
			size, mtime, err := hashMatches(p, name)
			if err != nil {
				t.cfg.Logger.Warn("disk tier: removing orphan blob file", "tier", t.cfg.Name, "digest", "sha256:"+name, "err", err)
				if err := os.Remove(p); err != nil {
					return st, err
				}
				st.OrphansRemoved++
				continue
			}
			adopt = append(adopt, row{size: size, atime: mtime})
			adoptHex = append(adoptHex, name)
			blobs++
			bytes += size
		}
	}
	if len(adoptHex) > 0 {
		if err := t.writeBatch(func(wb *badger.WriteBatch) error {
			for i, hex := range adoptHex {
				if err := wb.Set(blobKey(hex), encodeRow(adopt[i])); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return st, err
		}
	}
	st.OrphansAdopted = len(adopt)
	t.blobs.Store(blobs)
	t.bytes.Store(bytes)
	return st, nil
}

func (t *Tier) writeBatch(fn func(*badger.WriteBatch) error) error {
	wb := t.db.NewWriteBatch()
	defer wb.Cancel()
	if err := fn(wb); err != nil {
		return err
	}
	return wb.Flush()
}

// hashMatches reports the size and mtime of the file at p if its content
// hashes to hex; otherwise an error (a *blob.MismatchError for bad content).
func hashMatches(p, hex string) (size, mtime int64, err error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	h := sha256.New()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	n, err := io.CopyBuffer(h, struct{ io.Reader }{f}, *bp)
	if err != nil {
		return 0, 0, err
	}
	want := blob.Digest("sha256:" + hex)
	if got := blob.NewDigestFromHash(h); got != want || n != fi.Size() {
		return 0, 0, &blob.MismatchError{Want: want, WantSize: fi.Size(), Got: got, GotSize: n}
	}
	return n, fi.ModTime().UnixNano(), nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
