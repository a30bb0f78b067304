package ext4

import (
	"fmt"
	"os"
	"syscall"

	"github.com/strata-oci/strata/internal/sparse"
)

// newSparseFile returns a writer over the fresh, empty file f that turns
// all-zero 4 KiB blocks written past everything written so far into holes
// (see sparse.Writer); Finish sets the file's size to the logical size.
func newSparseFile(f *os.File) *sparse.Writer { return sparse.NewWriter(f, fsBlockSize) }

// Free space a conversion leaves on the file system of its work directory:
// the smaller of freeReserveMax and freeReservePct percent of its size.
// Free space is looked at again after every statfsEvery bytes written.
const (
	freeReserveMax = 256 << 20
	freeReservePct = 2
	statfsEvery    = 16 << 20
)

// spaceCheckedFile is f whose writes stop, with an error wrapping
// syscall.ENOSPC, before the file system of dir would keep less than its
// reserve of free space.
type spaceCheckedFile struct {
	*os.File
	dir   string
	since int64
}

func newSpaceCheckedFile(f *os.File, dir string) *spaceCheckedFile {
	return &spaceCheckedFile{File: f, dir: dir, since: statfsEvery}
}

// WriteAt implements io.WriterAt.
func (f *spaceCheckedFile) WriteAt(p []byte, off int64) (int, error) {
	if f.since += int64(len(p)); f.since >= statfsEvery {
		f.since = 0
		var st syscall.Statfs_t
		if err := syscall.Statfs(f.dir, &st); err == nil {
			bs := int64(st.Bsize)
			reserve := min(freeReserveMax, int64(st.Blocks)*bs*freeReservePct/100)
			if avail := int64(st.Bavail) * bs; avail-int64(len(p)) < reserve {
				return 0, fmt.Errorf("%w: %d bytes free on the file system of %s, %d kept in reserve", syscall.ENOSPC, avail, f.dir, reserve)
			}
		}
	}
	return f.File.WriteAt(p, off)
}
