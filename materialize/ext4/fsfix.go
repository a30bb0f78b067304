package ext4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// On-disk constants of the ext4 layout that finishFS edits. Offsets are
// from the Linux kernel's struct ext4_super_block and struct
// ext4_group_desc (32-byte descriptors: the 64bit feature is never set by
// the writer we use).
const (
	sbOffset = 1024

	sbInodesCount     = 0
	sbBlocksCount     = 4
	sbFreeBlocksCount = 12
	sbFreeInodesCount = 16
	sbFirstDataBlock  = 20
	sbLogBlockSize    = 24
	sbBlocksPerGroup  = 32
	sbInodesPerGroup  = 40
	sbMagic           = 56
	sbInodeSize       = 88
	sbFeatureIncompat = 96
	sbFeatureRoCompat = 100

	ext4Magic = 0xEF53

	incompatMetaBG       = 0x10
	incompat64Bit        = 0x80
	roCompatGdtCsum      = 0x10
	roCompatMetadataCsum = 0x400
	roCompatReadonly     = 0x1000

	gdSize            = 32
	gdBlockBitmap     = 0
	gdInodeBitmap     = 4
	gdInodeTable      = 8
	gdFreeBlocksCount = 12
	gdFreeInodesCount = 14
	gdUsedDirsCount   = 16

	fsBlockSize = 4096

	kernelReserveBlocks = 4096
)

var errLayout = errors.New("ext4: unexpected filesystem layout")

// fsGeometry is what finishFS read from the superblock.
type fsGeometry struct {
	Blocks, FreeBlocks, Inodes, FreeInodes uint32
	InodesPerGroup, Groups                 uint32
}

// growSpec says how much room to add.
type growSpec struct {
	FreeBlocks uint64 // at least this many free blocks afterwards
	FreeInodes uint64 // at least this many free inodes afterwards
	// GDTBlocks is how many blocks after the superblock the writer reserved
	// for group descriptors (the writer's MaximumDiskSize decides it): the
	// filesystem can grow to GDTBlocks*128 groups.
	GDTBlocks uint32
	// MaxBytes, if > 0, bounds the grown filesystem's size.
	MaxBytes int64
}

// rwAt is the file finishFS edits in place.
type rwAt interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
}

// finishFS post-processes an image written by hcsshim's compactext4 so that
// it is a normal, writable ext4 filesystem that e2fsck -fn accepts:
//
//  1. It sets the padding bits at the end of every group's inode bitmap
//     (bits inodes_per_group..blocksize*8-1). The kernel and e2fsck require
//     them set; compactext4 leaves them clear, which is what makes
//     "e2fsck -fn" report "Padding at end of inode bitmap is not set" and
//     exit 4.
//  2. It clears the RO_COMPAT_READONLY feature compactext4 sets, so the
//     image can be mounted read-write by an executor that writes into it.
//  3. For free inodes, it first widens the inode tables in place (see
//     widenInodeTables) when the last group has room for that.
//  4. It grows the filesystem by whole block groups (and first into the
//     tail of the last group) until it has at least spec.FreeBlocks free
//     blocks and spec.FreeInodes free inodes. New groups keep their block
//     bitmap, inode bitmap and inode table at their own start (flex_bg
//     allows any placement); their inode tables are left as zeros, which
//     the sparse output turns into holes. Descriptors go into the blocks
//     the writer reserved for them.
//
// It refuses layouts it does not know (other block sizes, 64bit, meta_bg,
// checksummed descriptors) with an error wrapping errLayout.
func finishFS(f rwAt, spec growSpec) (fsGeometry, error) {
	var g fsGeometry
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, sbOffset); err != nil {
		return g, fmt.Errorf("ext4: read superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[sbMagic:]) != ext4Magic {
		return g, fmt.Errorf("%w: bad superblock magic", errLayout)
	}
	if le.Uint32(sb[sbLogBlockSize:]) != 2 || le.Uint32(sb[sbFirstDataBlock:]) != 0 ||
		le.Uint32(sb[sbBlocksPerGroup:]) != fsBlockSize*8 {
		return g, fmt.Errorf("%w: want 4 KiB blocks, first data block 0, %d blocks per group", errLayout, fsBlockSize*8)
	}
	incompat := le.Uint32(sb[sbFeatureIncompat:])
	rocompat := le.Uint32(sb[sbFeatureRoCompat:])
	if incompat&(incompat64Bit|incompatMetaBG) != 0 || rocompat&(roCompatGdtCsum|roCompatMetadataCsum) != 0 {
		return g, fmt.Errorf("%w: unsupported features incompat=%#x ro_compat=%#x", errLayout, incompat, rocompat)
	}
	const bpg = fsBlockSize * 8
	blocks := le.Uint32(sb[sbBlocksCount:])
	ipg := le.Uint32(sb[sbInodesPerGroup:])
	inodeSize := uint32(le.Uint16(sb[sbInodeSize:]))
	if blocks == 0 || ipg == 0 || ipg > bpg || inodeSize == 0 || (ipg*inodeSize)%fsBlockSize != 0 {
		return g, fmt.Errorf("%w: blocks=%d inodes_per_group=%d inode_size=%d", errLayout, blocks, ipg, inodeSize)
	}
	groups := (blocks + bpg - 1) / bpg
	if le.Uint32(sb[sbInodesCount:]) != groups*ipg {
		return g, fmt.Errorf("%w: inode count %d != %d groups * %d", errLayout, le.Uint32(sb[sbInodesCount:]), groups, ipg)
	}
	gdBytes := make([]byte, groups*gdSize)
	if _, err := f.ReadAt(gdBytes, fsBlockSize); err != nil {
		return g, fmt.Errorf("ext4: read group descriptors: %w", err)
	}
	bitmap := make([]byte, fsBlockSize)
	setBits := func(b []byte, from, to uint32) {
		for j := from; j < to; j++ {
			b[j/8] |= 1 << (j % 8)
		}
	}

	// 1. Inode bitmap padding.
	if ipg < bpg {
		for i := uint32(0); i < groups; i++ {
			blk := int64(le.Uint32(gdBytes[i*gdSize+gdInodeBitmap:]))
			if _, err := f.ReadAt(bitmap, blk*fsBlockSize); err != nil {
				return g, fmt.Errorf("ext4: read inode bitmap of group %d: %w", i, err)
			}
			setBits(bitmap, ipg, bpg)
			if _, err := f.WriteAt(bitmap, blk*fsBlockSize); err != nil {
				return g, fmt.Errorf("ext4: write inode bitmap of group %d: %w", i, err)
			}
		}
	}

	// 2. Writable.
	le.PutUint32(sb[sbFeatureRoCompat:], rocompat&^roCompatReadonly)

	// 3. Inodes: widen the inode tables where the layout allows it, which
	// costs a few blocks per group instead of whole new groups.
	if need := int64(spec.FreeInodes) - int64(le.Uint32(sb[sbFreeInodesCount:])); need > 0 {
		ok, err := widenInodeTables(f, sb, gdBytes, groups, need, spec)
		if err != nil {
			return g, err
		}
		if ok {
			blocks = le.Uint32(sb[sbBlocksCount:])
			ipg = le.Uint32(sb[sbInodesPerGroup:])
		}
	}

	// 4. Grow.
	if spec.FreeBlocks > 0 {
		// The kernel keeps min(2%, 4096 blocks) of free space to itself
		// (s_resv_clusters): add the most it can take so that statfs shows
		// at least FreeBlocks available. Free blocks cost nothing on disk.
		spec.FreeBlocks += kernelReserveBlocks
	}
	freeBlocks := le.Uint32(sb[sbFreeBlocksCount:])
	freeInodes := le.Uint32(sb[sbFreeInodesCount:])
	needB := int64(spec.FreeBlocks) - int64(freeBlocks)
	needI := int64(spec.FreeInodes) - int64(freeInodes)
	newBlocks, newGroups := blocks, groups
	var extraGDs []byte
	if needB > 0 || needI > 0 {
		needB = max(needB, 0)
		needI = max(needI, 0)
		itb := ipg * inodeSize / fsBlockSize
		meta := 2 + itb
		tail := int64(groups*bpg - blocks) // blocks past the end of the last group
		var addGroups int64
		if needI > 0 {
			addGroups = (needI + int64(ipg) - 1) / int64(ipg)
		}
		if rem := needB - tail; rem > 0 {
			addGroups = max(addGroups, (rem+int64(bpg-meta)-1)/int64(bpg-meta))
		}
		if addGroups == 0 {
			newBlocks = blocks + uint32(needB)
		} else {
			// Last new group: just big enough for what the full ones lack.
			rem := max(needB-tail-(addGroups-1)*int64(bpg-meta), 64)
			last := min(int64(meta)+rem, bpg)
			total := int64(groups)*bpg + (addGroups-1)*bpg + last
			if total >= 1<<32 {
				return g, fmt.Errorf("ext4: free space too large: %d blocks exceed 2^32", total)
			}
			newBlocks = uint32(total)
			newGroups = groups + uint32(addGroups)
		}
		if spec.MaxBytes > 0 && int64(newBlocks)*fsBlockSize > spec.MaxBytes {
			return g, fmt.Errorf("ext4: content plus free space need %d bytes, more than the maximum disk size %d", int64(newBlocks)*fsBlockSize, spec.MaxBytes)
		}
		if cap := spec.GDTBlocks * (fsBlockSize / gdSize); newGroups > cap {
			return g, fmt.Errorf("ext4: free space too large: %d groups exceed the %d that the reserved descriptor blocks hold (raise MaxDiskSize)", newGroups, cap)
		}

		// Free the tail of the old last group.
		if tail > 0 {
			lg := groups - 1
			from := blocks - lg*bpg
			to := min(newBlocks-lg*bpg, bpg)
			blk := int64(le.Uint32(gdBytes[lg*gdSize+gdBlockBitmap:]))
			if _, err := f.ReadAt(bitmap, blk*fsBlockSize); err != nil {
				return g, fmt.Errorf("ext4: read block bitmap of group %d: %w", lg, err)
			}
			for j := from; j < to; j++ {
				bitmap[j/8] &^= 1 << (j % 8)
			}
			if _, err := f.WriteAt(bitmap, blk*fsBlockSize); err != nil {
				return g, fmt.Errorf("ext4: write block bitmap of group %d: %w", lg, err)
			}
			d := gdBytes[lg*gdSize:]
			le.PutUint16(d[gdFreeBlocksCount:], le.Uint16(d[gdFreeBlocksCount:])+uint16(to-from))
			freeBlocks += to - from
		}

		// Take the reserved descriptor blocks the new groups need.
		usedGD := (groups + fsBlockSize/gdSize - 1) / (fsBlockSize / gdSize)
		newUsedGD := (newGroups + fsBlockSize/gdSize - 1) / (fsBlockSize / gdSize)
		if newUsedGD > usedGD {
			blk := int64(le.Uint32(gdBytes[gdBlockBitmap:]))
			if _, err := f.ReadAt(bitmap, blk*fsBlockSize); err != nil {
				return g, fmt.Errorf("ext4: read block bitmap of group 0: %w", err)
			}
			for j := 1 + usedGD; j < 1+newUsedGD; j++ {
				if bitmap[j/8]&(1<<(j%8)) != 0 {
					return g, fmt.Errorf("%w: reserved descriptor block %d is in use", errLayout, j)
				}
				bitmap[j/8] |= 1 << (j % 8)
			}
			if _, err := f.WriteAt(bitmap, blk*fsBlockSize); err != nil {
				return g, fmt.Errorf("ext4: write block bitmap of group 0: %w", err)
			}
			n := newUsedGD - usedGD
			le.PutUint16(gdBytes[gdFreeBlocksCount:], le.Uint16(gdBytes[gdFreeBlocksCount:])-uint16(n))
			freeBlocks -= n
		}

		// New groups: metadata at the start of each.
		extraGDs = make([]byte, (newGroups-groups)*gdSize)
		for i := groups; i < newGroups; i++ {
			start := i * bpg
			size := min(newBlocks-start, bpg)
			clear(bitmap)
			setBits(bitmap, 0, meta)
			setBits(bitmap, size, bpg)
			if _, err := f.WriteAt(bitmap, int64(start)*fsBlockSize); err != nil {
				return g, fmt.Errorf("ext4: write block bitmap of group %d: %w", i, err)
			}
			clear(bitmap)
			setBits(bitmap, ipg, bpg)
			if _, err := f.WriteAt(bitmap, int64(start+1)*fsBlockSize); err != nil {
				return g, fmt.Errorf("ext4: write inode bitmap of group %d: %w", i, err)
			}
			d := extraGDs[(i-groups)*gdSize:]
			le.PutUint32(d[gdBlockBitmap:], start)
			le.PutUint32(d[gdInodeBitmap:], start+1)
			le.PutUint32(d[gdInodeTable:], start+2)
			le.PutUint16(d[gdFreeBlocksCount:], uint16(size-meta))
			le.PutUint16(d[gdFreeInodesCount:], uint16(ipg))
			freeBlocks += size - meta
			freeInodes += ipg
		}
		le.PutUint32(sb[sbBlocksCount:], newBlocks)
		le.PutUint32(sb[sbInodesCount:], newGroups*ipg)
		le.PutUint32(sb[sbFreeBlocksCount:], freeBlocks)
		le.PutUint32(sb[sbFreeInodesCount:], freeInodes)
		if err := f.Truncate(int64(newBlocks) * fsBlockSize); err != nil {
			return g, fmt.Errorf("ext4: grow image: %w", err)
		}
	}

	if _, err := f.WriteAt(append(gdBytes, extraGDs...), fsBlockSize); err != nil {
		return g, fmt.Errorf("ext4: write group descriptors: %w", err)
	}
	if _, err := f.WriteAt(sb, sbOffset); err != nil {
		return g, fmt.Errorf("ext4: write superblock: %w", err)
	}
	return fsGeometry{
		Blocks: newBlocks, FreeBlocks: freeBlocks,
		Inodes: newGroups * ipg, FreeInodes: freeInodes,
		InodesPerGroup: ipg, Groups: newGroups,
	}, nil
}

// widenInodeTables raises inodes_per_group so that the filesystem gains at
// least need free inodes (as far as 32768 per group allows), keeping every
// inode number and data block where it is. It applies only to the layout
// hcsshim's writer produces: all inode tables contiguous from group 0's
// table, followed by each group's block and inode bitmap, with the last
// group's span holding room for the larger tables. Because the tables are
// contiguous, inode n stays at the same byte offset however many inodes a
// group has; the tables grow over the old bitmaps (zeroed, as free inodes
// must be) and the bitmaps move after them, rebuilt from the old ones.
// It reports false, changing nothing, when the layout does not match or the
// room is missing (the caller then adds groups instead). sb and gd are
// updated in memory; the caller writes them.
func widenInodeTables(f rwAt, sb, gd []byte, groups uint32, need int64, spec growSpec) (bool, error) {
	le := binary.LittleEndian
	const bpg = fsBlockSize * 8
	ipg := le.Uint32(sb[sbInodesPerGroup:])
	inodeSize := uint32(le.Uint16(sb[sbInodeSize:]))
	blocks := le.Uint32(sb[sbBlocksCount:])
	perBlock := uint32(fsBlockSize) / inodeSize
	itb := ipg / perBlock
	t0 := le.Uint32(gd[gdInodeTable:])
	b0 := t0 + groups*itb
	if 1+spec.GDTBlocks > t0 {
		return false, nil
	}
	for i := uint32(0); i < groups; i++ {
		d := gd[i*gdSize:]
		if le.Uint32(d[gdInodeTable:]) != t0+i*itb || le.Uint32(d[gdBlockBitmap:]) != b0+2*i || le.Uint32(d[gdInodeBitmap:]) != b0+2*i+1 {
			return false, nil
		}
	}
	add := (need + int64(groups) - 1) / int64(groups)
	ipg2 := min((int64(ipg)+add+int64(perBlock)-1)/int64(perBlock)*int64(perBlock), bpg)
	if ipg2 <= int64(ipg) {
		return false, nil
	}
	itb2 := uint32(ipg2) / perBlock
	b02 := t0 + groups*itb2
	end := b02 + 2*groups // first block after the new bitmaps
	if end > groups*bpg || (spec.MaxBytes > 0 && int64(end)*fsBlockSize > spec.MaxBytes) {
		return false, nil
	}
	newBlocks := max(blocks, end)

	// Which inodes are in use (old bitmaps) and which are directories.
	oldIB := make([]byte, groups*fsBlockSize)
	for i := uint32(0); i < groups; i++ {
		if _, err := f.ReadAt(oldIB[i*fsBlockSize:(i+1)*fsBlockSize], int64(b0+2*i+1)*fsBlockSize); err != nil {
			return false, fmt.Errorf("ext4: read inode bitmap of group %d: %w", i, err)
		}
	}
	newIB := make([]byte, groups*fsBlockSize)
	usedI := make([]uint32, groups)
	dirs := make([]uint32, groups)
	table := make([]byte, itb*fsBlockSize)
	for i := uint32(0); i < groups; i++ {
		if _, err := f.ReadAt(table, int64(t0+i*itb)*fsBlockSize); err != nil {
			return false, fmt.Errorf("ext4: read inode table of group %d: %w", i, err)
		}
		for j := uint32(0); j < ipg; j++ {
			if oldIB[i*fsBlockSize+j/8]&(1<<(j%8)) == 0 {
				continue
			}
			idx := i*ipg + j // inode number - 1
			ng, nj := idx/uint32(ipg2), idx%uint32(ipg2)
			newIB[ng*fsBlockSize+nj/8] |= 1 << (nj % 8)
			usedI[ng]++
			if le.Uint16(table[j*inodeSize:])&0xF000 == 0x4000 {
				dirs[ng]++
			}
		}
	}

	// The old bitmaps become inode table: zero them.
	zero := make([]byte, 2*groups*fsBlockSize)
	if _, err := f.WriteAt(zero, int64(b0)*fsBlockSize); err != nil {
		return false, fmt.Errorf("ext4: clear old bitmaps: %w", err)
	}
	usedGD := (groups + fsBlockSize/gdSize - 1) / (fsBlockSize / gdSize)
	var freeBlocks, freeInodes uint32
	bm := make([]byte, fsBlockSize)
	for i := uint32(0); i < groups; i++ {
		// Block bitmap: everything below end is used (data, tables,
		// bitmaps), except descriptor blocks reserved but not needed.
		clear(bm)
		var used uint32
		for j := uint32(0); j < bpg; j++ {
			b := i*bpg + j
			if (b < end && !(b >= 1+usedGD && b < 1+spec.GDTBlocks)) || b >= newBlocks {
				bm[j/8] |= 1 << (j % 8)
				used++
			}
		}
		if _, err := f.WriteAt(bm, int64(b02+2*i)*fsBlockSize); err != nil {
			return false, fmt.Errorf("ext4: write block bitmap of group %d: %w", i, err)
		}
		ib := newIB[i*fsBlockSize : (i+1)*fsBlockSize]
		for j := uint32(ipg2); j < bpg; j++ {
			ib[j/8] |= 1 << (j % 8)
		}
		if _, err := f.WriteAt(ib, int64(b02+2*i+1)*fsBlockSize); err != nil {
			return false, fmt.Errorf("ext4: write inode bitmap of group %d: %w", i, err)
		}
		d := gd[i*gdSize:]
		le.PutUint32(d[gdBlockBitmap:], b02+2*i)
		le.PutUint32(d[gdInodeBitmap:], b02+2*i+1)
		le.PutUint32(d[gdInodeTable:], t0+i*itb2)
		le.PutUint16(d[gdFreeBlocksCount:], uint16(bpg-used))
		le.PutUint16(d[gdFreeInodesCount:], uint16(uint32(ipg2)-usedI[i]))
		le.PutUint16(d[gdUsedDirsCount:], uint16(dirs[i]))
		freeBlocks += bpg - used
		freeInodes += uint32(ipg2) - usedI[i]
	}
	if err := f.Truncate(int64(newBlocks) * fsBlockSize); err != nil {
		return false, fmt.Errorf("ext4: grow image: %w", err)
	}
	le.PutUint32(sb[sbBlocksCount:], newBlocks)
	le.PutUint32(sb[sbInodesPerGroup:], uint32(ipg2))
	le.PutUint32(sb[sbInodesCount:], groups*uint32(ipg2))
	le.PutUint32(sb[sbFreeBlocksCount:], freeBlocks)
	le.PutUint32(sb[sbFreeInodesCount:], freeInodes)
	return true, nil
}
