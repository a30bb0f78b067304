// Package disk is Strata's local disk tier: a content-addressed blob store on
// one filesystem, with a Badger (v4) index, a byte budget with LRU eviction,
// and crash safety that comes from the files themselves.
//
// # Layout
//
// Under the root directory:
//
//	LOCK                        held with flock(LOCK_EX) while a Tier is open
//	SESSION                     the boot id, while a Tier is open (see Guarantees)
//	SUSPECT                     after a machine crash, until a Verify completes
//	blobs/sha256/ab/<hex>       one file per blob, named by its digest
//	tmp/                        temp files of Puts and staging files (same filesystem)
//	index/                      Badger: blob rows (size, last access) and refs
//	index.damaged-<time>/       a damaged index moved aside (the newest two)
//
// # Guarantees
//
// A blob becomes visible all-or-nothing: Put writes a temp file while hashing
// it, checks digest and size, renames it into place and only then records
// the index row, so no reader, in this process or another, ever sees part
// of a blob while the system runs. A crash of the process at any point
// leaves at most a temp file or a file without a row (the page cache still
// holds what was written); Open reconciles the index with the files (see
// ReconcileStats). Reads hash as they stream and fail at EOF with a
// *blob.MismatchError if a file rotted, after which the entry is dropped,
// so the caller can treat the error as a miss and refetch.
//
// Put and CommitStaged do not fsync: a background syncer fsyncs each
// committed file and then its directory, and Close returns only once every
// blob is durable. (The fsyncs were a fifth of a cold image fetch, and
// every read hashes the blob anyway.) A blob the syncer cannot make durable is logged and dropped.
// So a power loss or kernel crash may leave an index row whose file is torn.
// To know, Open writes root/SESSION with the boot id and a clean Close
// removes it. An Open that finds it from another boot marks the tier
// suspect (root/SUSPECT, logged once) until a Verify pass completes with
// only good blobs left: meanwhile OpenBlobFile, the one way out that hands
// a file over instead of streaming it through a hash, hashes each blob
// before its first handout and drops a torn one. A torn file without a row
// is hashed by reconcile like any orphan. A Put of a blob the tier holds
// but has not verified since the crash writes it again. An Open that finds
// SESSION from this boot (only the process died) flushes the filesystem
// once (syncfs), so the next clean Close can vouch for those files too.
// OpenBlobFile fsyncs the file it returns, so a hard link of it is durable.
// If SESSION cannot be written, Puts and CommitStaged fsync before they
// return.
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
