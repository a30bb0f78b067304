package disk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"

	"github.com/strata-oci/strata/blob"
)

// Index keys. Blob rows and refs live under separate prefixes so listing one
// never touches the other.
const (
	blobPrefix = "b/" // "b/" + 64 hex -> row
	refPrefix  = "r/" // "r/" + RefKey.String() -> encoded ref
)

// row is the index record of one blob.
type row struct {
	size  int64
	atime int64 // last access, unix nanoseconds
}

const rowVersion = 1

func blobKey(hex string) []byte { return []byte(blobPrefix + hex) }

func encodeRow(r row) []byte {
	b := make([]byte, 17)
	b[0] = rowVersion
	binary.BigEndian.PutUint64(b[1:], uint64(r.size))
	binary.BigEndian.PutUint64(b[9:], uint64(r.atime))
	return b
}

func decodeRow(b []byte) (row, error) {
	if len(b) != 17 || b[0] != rowVersion {
		return row{}, fmt.Errorf("malformed index row (%d bytes)", len(b))
	}
	r := row{size: int64(binary.BigEndian.Uint64(b[1:])), atime: int64(binary.BigEndian.Uint64(b[9:]))}
	if r.size < 0 {
		return row{}, fmt.Errorf("malformed index row: negative size")
	}
	return r, nil
}

// getRow reads a blob row in txn; found is false when there is none.
func getRow(txn *badger.Txn, hex string) (r row, found bool, err error) {
	item, err := txn.Get(blobKey(hex))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return row{}, false, nil
	}
	if err != nil {
		return row{}, false, err
	}
	err = item.Value(func(v []byte) error {
		r, err = decodeRow(v)
		return err
	})
	return r, err == nil, err
}

const refVersion = 1

// Ref record: version, flags (bit 0: has expiry), uvarint size, if expiring
// varint Unix seconds and uvarint nanoseconds, uvarint digest length,
// digest, media type (the rest). Seconds keep any expiry representable
// (UnixNano overflows after 2262).
const refHasExpiry = 1

func refKey(k blob.RefKey) []byte { return []byte(refPrefix + k.String()) }

func encodeRef(r blob.Ref) []byte {
	b := make([]byte, 0, 2+4*binary.MaxVarintLen64+len(r.Digest)+len(r.MediaType))
	var flags byte
	if !r.Expires.IsZero() {
		flags |= refHasExpiry
	}
	b = append(b, refVersion, flags)
	b = binary.AppendUvarint(b, uint64(r.Size))
	if flags&refHasExpiry != 0 {
		b = binary.AppendVarint(b, r.Expires.Unix())
		b = binary.AppendUvarint(b, uint64(r.Expires.Nanosecond()))
	}
	b = binary.AppendUvarint(b, uint64(len(r.Digest)))
	b = append(b, r.Digest...)
	return append(b, r.MediaType...)
}

func decodeRef(b []byte) (blob.Ref, error) {
	bad := func(what string) (blob.Ref, error) {
		return blob.Ref{}, fmt.Errorf("malformed ref record: %s", what)
	}
	if len(b) < 2 || b[0] != refVersion || b[1]&^refHasExpiry != 0 {
		return bad("header")
	}
	flags := b[1]
	b = b[2:]
	size, n := binary.Uvarint(b)
	if n <= 0 || size > 1<<62 {
		return bad("size")
	}
	b = b[n:]
	var r blob.Ref
	if flags&refHasExpiry != 0 {
		sec, n := binary.Varint(b)
		if n <= 0 {
			return bad("expiry")
		}
		b = b[n:]
		nsec, n := binary.Uvarint(b)
		if n <= 0 || nsec >= 1e9 {
			return bad("expiry")
		}
		b = b[n:]
		r.Expires = time.Unix(sec, int64(nsec))
		if r.Expires.IsZero() {
			return bad("expiry")
		}
	}
	dl, n := binary.Uvarint(b)
	if n <= 0 || dl > uint64(len(b)-n) {
		return bad("digest")
	}
	b = b[n:]
	r.Digest, r.Size, r.MediaType = blob.Digest(b[:dl]), int64(size), string(b[dl:])
	return r, nil
}

// badgerOptions are small-footprint settings: a test root stays a few MiB
// of real disk, and memory stays modest. Writes are not synced: a process
// crash keeps them (the write-ahead log is mmapped), and after a machine
// crash Open rebuilds what was lost from the files.
func badgerOptions(dir string, log *slog.Logger) badger.Options {
	return badger.DefaultOptions(dir).
		WithLogger(badgerLogger{log}).
		WithMetricsEnabled(false).
		WithSyncWrites(false).
		WithCompression(options.None).
		WithBlockCacheSize(0).
		WithMemTableSize(4 << 20).
		WithNumMemtables(2).
		WithBaseTableSize(1 << 20).
		WithBaseLevelSize(8 << 20).
		WithNumLevelZeroTables(4).
		WithNumLevelZeroTablesStall(12).
		WithValueThreshold(4 << 10).
		WithValueLogFileSize(16 << 20).
		WithNumCompactors(2).
		WithNumGoroutines(2).
		WithBypassLockGuard(true)
}

// badgerLogger routes Badger's log lines to slog (info and debug at debug).
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) log(level slog.Level, f string, a []any) {
	if b.l.Enabled(context.Background(), level) {
		b.l.Log(context.Background(), level, "badger: "+strings.TrimSpace(fmt.Sprintf(f, a...)))
	}
}

func (b badgerLogger) Errorf(f string, a ...any)   { b.log(slog.LevelError, f, a) }
func (b badgerLogger) Warningf(f string, a ...any) { b.log(slog.LevelWarn, f, a) }
func (b badgerLogger) Infof(f string, a ...any)    { b.log(slog.LevelDebug, f, a) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.log(slog.LevelDebug, f, a) }

// writeBatchDB adds rows through one WriteBatch (tests and benchmarks that
// seed an index use it).
func (t *Tier) writeBatchDB(fn func(add func(hex string, r row) error) error) error {
	return t.withDB(func(db *badger.DB) error {
		wb := db.NewWriteBatch()
		defer wb.Cancel()
		if err := fn(func(hex string, r row) error { return wb.Set(blobKey(hex), encodeRow(r)) }); err != nil {
			return err
		}
		return wb.Flush()
	})
}
