package ext4

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/internal/sparse"
)

// How CopyOut placed an image.
const (
	PlacedLink          = "link"            // a hard link: the same read-only file
	PlacedReflink       = "reflink"         // a copy-on-write clone (FICLONE): no data written
	PlacedCopyFileRange = "copy_file_range" // the data extents copied by the kernel (it may share blocks: XFS, btrfs, NFS)
	PlacedCopy          = "copy"            // a sparse copy through this process
)

// CopyOut places the image file at src (a Result.Path) at dst, with the
// permission bits mode, and returns how (Placed*):
//
//   - If mode has no write bit and is src's own permission bits (0400 for
//     a Result.Path), dst becomes a hard link of src: no bytes are
//     written, and dst shares src's read-only file, which must then stay
//     unwritten and keep its mode, as src must (see Result.Path).
//   - Otherwise dst is a new file of its own: a reflink of src where the
//     file system can clone, else a copy_file_range of src's data extents,
//     else a sparse copy through this process. Holes stay holes.
//
// dst is replaced atomically through a temporary name in its directory:
// an existing file is replaced, a symlink at dst is replaced and not
// followed, and a failure leaves dst as it was and no temporary file. dst
// is not fsynced. CopyOut reads src through an open descriptor; a src that
// is not a regular file is refused.
func CopyOut(src, dst string, mode fs.FileMode) (how string, err error) {
	if mode&^fs.ModePerm != 0 {
		return "", fmt.Errorf("ext4: copy out: mode %v is not permission bits", mode)
	}
	in, err := os.OpenFile(src, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("ext4: copy out: %w", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", fmt.Errorf("ext4: copy out: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("ext4: copy out: %s is not a regular file", src)
	}
	dir := filepath.Dir(dst)
	tmpName := filepath.Join(dir, "."+filepath.Base(dst)+".tmp-"+randomName())
	defer func() {
		if err != nil {
			os.Remove(tmpName)
		}
	}()
	if mode&0o222 == 0 && fi.Mode().Perm() == mode {
		// Through the open descriptor: the file checked above, whatever
		// src names by now.
		if linkFile(in, tmpName) == nil {
			if err = os.Rename(tmpName, dst); err != nil {
				return "", fmt.Errorf("ext4: copy out: %w", err)
			}
			return PlacedLink, nil
		}
		// Another file system, or no /proc: a copy.
	}
	out, err := os.OpenFile(tmpName, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return "", fmt.Errorf("ext4: copy out: %w", err)
	}
	how, err = copyInto(out, in, fi.Size())
	if err == nil {
		err = out.Chmod(mode)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmpName, dst)
	}
	if err != nil {
		return "", fmt.Errorf("ext4: copy out: %w", err)
	}
	return how, nil
}

// CopyFile copies the file in into the empty file out as CopyOut does when
// it does not link (a reflink, else copy_file_range of the data extents,
// else a sparse copy; holes kept, out's size set to in's) and returns which
// (Placed*). For a caller that makes and names out itself.
func CopyFile(out, in *os.File) (how string, err error) {
	fi, err := in.Stat()
	if err != nil {
		return "", fmt.Errorf("ext4: copy: %w", err)
	}
	if how, err = copyInto(out, in, fi.Size()); err != nil {
		return "", fmt.Errorf("ext4: copy: %w", err)
	}
	return how, nil
}

// copyInto copies the first size bytes of in into the empty file out, holes
// kept, by the cheapest means the file systems allow, and returns which
// (Placed*).
func copyInto(out, in *os.File, size int64) (string, error) {
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		if fi, err := out.Stat(); err == nil && fi.Size() == size {
			return PlacedReflink, nil
		}
		// A clone of more than size bytes (in grew?): copy instead.
		if err := out.Truncate(0); err != nil {
			return "", err
		}
	}
	err := copyExtents(out, in, size)
	if err == nil {
		return PlacedCopyFileRange, out.Truncate(size)
	}
	if !errors.Is(err, errNoCopyFileRange) {
		return "", err
	}
	// Whatever copyExtents wrote is in's own bytes at their offsets, and
	// the sparse writer skips only zeros: starting over is correct.
	sw := sparse.NewWriter(out, fsBlockSize)
	if _, err := io.CopyBuffer(sw, io.NewSectionReader(in, 0, size), make([]byte, 1<<20)); err != nil {
		return "", err
	}
	if _, err := sw.Finish(); err != nil {
		return "", err
	}
	return PlacedCopy, nil
}

// errNoCopyFileRange: the kernel cannot copy_file_range between these
// files (another file system on an old kernel, or a file system without it).
var errNoCopyFileRange = errors.New("copy_file_range not available")

// copyExtents copies in's data extents (SEEK_DATA/SEEK_HOLE; all of it
// where the file system cannot tell) below size into out at the same
// offsets with copy_file_range.
func copyExtents(out, in *os.File, size int64) error {
	ifd, ofd := int(in.Fd()), int(out.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(ifd, off, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			return nil // only a hole is left
		case errors.Is(err, unix.EINVAL):
			data = off // no SEEK_DATA: all data
		case err != nil:
			return err
		}
		end, err := unix.Seek(ifd, data, unix.SEEK_HOLE)
		if err != nil {
			end = size
		}
		end = min(end, size)
		for data < end {
			roff, woff := data, data
			n, err := unix.CopyFileRange(ifd, &roff, ofd, &woff, int(min(end-data, 1<<30)), 0)
			if err != nil {
				if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) ||
					errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EBADF) {
					return fmt.Errorf("%w: %w", errNoCopyFileRange, err)
				}
				return err
			}
			if n == 0 {
				return fmt.Errorf("ext4: copy: %w at offset %d of %d", io.ErrUnexpectedEOF, data, size)
			}
			data += int64(n)
		}
		off = end
	}
	return nil
}

// linkFile makes dst a hard link of the open file f (through
// /proc/self/fd: the file f is, whatever its name is by now).
func linkFile(f *os.File, dst string) error {
	return unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.AT_FDCWD, dst, unix.AT_SYMLINK_FOLLOW)
}

// randomName returns 16 random hex digits for a temporary file name.
func randomName() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
