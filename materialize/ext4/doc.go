// Package ext4 turns a fetched image into one ext4 filesystem image, the
// root disk of a Firecracker microVM, without root, without mounting and
// without a staging directory, and keeps it as a derived blob.
//
// # How an image is built
//
// Flatten reads the layers top-down, each once, and writes one tar stream
// of the merged view (whiteouts, opaque directories and shadowing applied;
// hard links whose target an upper layer shadowed turned into regular
// files; missing parent directories added as 0755 root:root). That stream
// feeds hcsshim's tar2ext4 writer (github.com/Microsoft/hcsshim
// ext4/tar2ext4, v0.15.0) through a pipe, and the writer's output goes to a
// sparse file: all-zero blocks are skipped, so they become holes. While one
// layer is written the next one down is already being decompressed, and
// the layers below those two download into the local tiers in the
// background (manifest.Prefetcher, two at a time), so that a cold image's
// layers do not each wait for their turn to start downloading.
//
// tar2ext4 writes a compact, read-only-flagged filesystem with no free
// space, and leaves the padding bits at the end of each group's inode
// bitmap clear, which makes "e2fsck -fn" report "Padding at end of inode
// bitmap is not set" (exit 4). The converter then edits the image in place
// (finishFS, pure Go, a few small reads and writes of the superblock, the
// group descriptors and the bitmaps): it sets those padding bits in every
// group and clears the RO_COMPAT_READONLY feature so the image can be
// mounted read-write. The result passes "e2fsck -fn" with exit 0; the root
// also holds lost+found (0700), as every ext4 filesystem does.
//
// Free space (Options) is added the same way, to the local copy only. Free
// blocks: the filesystem grows first into the tail of its last block group,
// then by whole groups (bitmaps and inode table at each group's start, inode
// tables left as holes). Free space is what statfs reports as available: the
// 4096 blocks the kernel may hold back (s_resv_clusters) are added on top.
// Free inodes: tar2ext4 sizes inodes-per-group to the content, so inodes are
// added first by widening every group's inode table in place (inode numbers
// and data blocks do not move; the bitmaps move behind the wider tables),
// and by whole new groups only when the last group lacks room for that.
// Config.MaxDiskSize bounds the grown image and decides how many descriptor
// blocks tar2ext4 reserves. The stored blob is the image without free space,
// so it stays small to hash, store and send, and one blob serves every
// free-space setting.
//
// # Derived blobs
//
// The image is stored in Config.Store under its own digest, and a ref in
// namespace blob.NamespaceDerived maps (image manifest digest, "ext4",
// canonical options of the stored bytes, Version) to it (media type
// MediaType), written only after the blob. The next Materialize for the
// same derivation, on this host or another sharing the Store's remote tier,
// downloads the blob (writing holes for zero blocks) instead of converting.
// Identical concurrent requests collapse into one; a failed conversion
// leaves nothing visible.
//
// # Writing the image once
//
// With Config.Stager (the disk tier among the Store's tiers) the ext4
// writer writes straight into a staging file of that tier, with its holes.
// The image handed out is a hard link of that file, read-only (0400) and
// never written again, so one conversion writes the image's bytes once;
// CopyOut places it elsewhere (a link when asked for read-only, else a
// reflink or copy_file_range copy). It is handed out before it is hashed:
// the writer writes the image's first blocks last, so the hash (578 MB:
// 0.36 s on the benchmark machine) can only start once the image is
// built, and the caller does not wait for it. Result.Digest is empty then;
// Result.Hashed waits for the digest. In the background the tier hashes
// the file and commits it by rename, the derivation ref goes to that tier,
// and the sidecar of the local image gets the digest; meanwhile only this
// Converter reuses the local image (another process, or this one after a
// restart before the hash ended, converts again), and Close waits for
// the hash. The Store then receives blob and ref, read
// through a verifying reader, after Materialize has returned: one store per
// derivation, cancelled by Close, awaited by Flush, a failure logged and
// counted (Stats.BackgroundStoreFailures), never returned. The tier may
// evict its name of the blob while a handout keeps the file (its usage
// drops at once, the disk space when the handout goes too). Images grown
// by Options, and a WorkDir on another file system than the tier, get a
// copy of their own. A download is written once too: the Store reads the
// blob from its shared tier through to its verified end, writing it back
// into the Stager as it streams, and the image handed out is a link of
// that file (made read-only by the tier). Without a Stager the image is
// built (or downloaded) in WorkDir/tmp, stored through the Store (a copy)
// and then handed out.
//
// # Limits
//
//   - Layers are read through layerio.Entries, as the overlay materializer
//     reads them, so both build the same tree: when one layer holds the
//     same path twice, the first entry wins (as in go-containerregistry's
//     mutate.Extract; a single streaming pass cannot take back a written
//     file), though a directory's later header gives its metadata; an
//     entry under a symlink or file of its own layer fails with
//     ErrInvalidLayer; ".." is clamped at the root.
//   - Symlink targets over 4095 bytes are refused (ErrInvalidLayer), and
//     overlayfs's own xattrs (trusted.overlay.*, user.overlay.*) are
//     dropped, as the overlay materializer does.
//   - An image has at most Config.MaxLayers layers (500 by default, as
//     overlayfs), and its layers together at most Config.MaxEntries tar
//     entries and Config.MaxImageBytes bytes of file content; the
//     conversion stops before the work directory's file system runs out
//     of space. A layer that failed its own limit or was invalid fails
//     again at once, without being read, for ten minutes.
//   - Sparse tar entries expand (their holes are written as zeros and
//     become holes again), counting with their logical size against
//     MaxImageBytes; xattrs that do not
//     fit in the inode and one extra block, names over 255 bytes and files
//     over 128 GiB fail the conversion (limits of the ext4 writer).
//   - The root directory also holds lost+found (0700) unless a layer
//     supplies its own.
//   - At most 32768 inodes per group; beyond what widening gives, free
//     inodes come with whole new groups (see above).
package ext4
