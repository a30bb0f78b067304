// Package disk is Strata's local disk tier: a content-addressed blob store on
// one filesystem, with a Badger (v4) index, a byte budget with LRU eviction,
// and crash safety that comes from the files themselves.
//
// # Layout
//
// Under the root directory:
//
//	LOCK                        held with flock(LOCK_EX) while a Tier is open
//	blobs/sha256/ab/<hex>       one file per blob, named by its digest
//	tmp/                        temp files of Puts and staging files (same filesystem)
//	index/                      Badger: blob rows (size, last access) and refs
//	index.damaged-<time>/       a damaged index moved aside (the newest two)
//
// # Guarantees
//
// A blob becomes visible all-or-nothing: Put writes a temp file while hashing
// it, fsyncs it, checks digest and size, renames it into place and fsyncs the
// directory, and only then records the index row. A crash at any point leaves
// at most a temp file or a file without a row; Open reconciles the index with
// the files (see ReconcileStats). Reads hash as they stream and fail at EOF
// with a *blob.MismatchError if a file rotted, after which the entry is
// dropped, so the caller can treat the error as a miss and refetch.
//
// Only one Tier may hold a root at a time, in this process or any other:
// a second Open fails with an error wrapping ErrLocked. Tools that must work
// on a root a live process holds (blobctl) go through that process.
//
// # Index writes
//
// A Put records its row at commit. Last-access updates from reads are kept
// in memory and written in one Badger WriteBatch every FlushInterval, when
// FlushThreshold of them are pending, and on Close; Badger writes are not
// synced, because the files are the truth and Open repairs the index from
// them (a killed process loses nothing: Badger's log is mmapped).
//
// # Damage and full disks
//
// Open moves a damaged index aside and rebuilds it from the blob files; the
// refs it held are lost (see Tier.IndexRebuilds). The tier keeps
// IndexReserve bytes free for the index: Put stores no blob that would
// leave less, and a Tier opened with less free has a read-only index (see
// Tier.IndexReadOnly) on which reads, Delete, eviction and Verify work:
// a removal deletes the file first and hides the row until the index can
// be written.
//
// # Eviction
//
// With a Budget, a background pass removes the least recently used blobs
// (by last Put or Open; Stat does not count) once usage passes the high
// watermark, down to the low one. EvictTo and EvictOlderThan do the same on
// demand, and Verify re-hashes everything. Eviction locks one blob at a
// time and never a reader: a blob being read while it is evicted reads to
// the end from its open file.
//
// # Sparse blobs
//
// Put leaves holes for aligned all-zero 64 KiB blocks, so a mostly-empty
// ext4 image occupies little more than its data. Reads see the zeros.
//
// # Blobs written in place
//
// Stage hands out a staging file in tmp/ that a writer fills at any
// offsets, holes included (the ext4 converter writes its image there
// directly); CommitStaged hashes it, fsyncs it, makes it read-only and
// renames it into the blob tree, so a derived image is written once.
// A committed blob file is never written again (a blob is replaced only
// by renaming another file over its name, removed only by unlinking), so
// a hard link of it is a stable read-only handout: eviction drops the
// tier's name and its usage, and the handout keeps the bytes.
package disk
