// Package privdir makes a directory private to the current user: the one
// check that keeps a cache root (blobs, extracted layers with setuid files
// and device nodes) out of other local users' reach.
package privdir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// ErrForeignOwner is returned for a directory another user owns. It wraps
// fs.ErrPermission.
var ErrForeignOwner = fmt.Errorf("directory belongs to another user: %w", fs.ErrPermission)

// Ensure creates dir as 0700 if it is missing (with its missing parents
// when parents is set), refuses it if the current effective user does not
// own it, and removes any group or other permission bits. The owner check
// and the chmod go through one open descriptor, so a directory swapped in
// between cannot be changed instead. With follow unset, dir itself must
// not be a symlink.
func Ensure(dir string, parents, follow bool) error {
	mkdir := os.Mkdir
	if parents {
		mkdir = os.MkdirAll
	}
	if err := mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	flags := unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC
	if !follow {
		flags |= unix.O_NOFOLLOW
	}
	fd, err := unix.Open(dir, flags, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &fs.PathError{Op: "stat", Path: dir, Err: err}
	}
	if euid := os.Geteuid(); int(st.Uid) != euid {
		return fmt.Errorf("%s belongs to uid %d, this process runs as uid %d: %w", dir, st.Uid, euid, ErrForeignOwner)
	}
	if st.Mode&0o077 != 0 {
		if err := unix.Fchmod(fd, 0o700); err != nil {
			return &fs.PathError{Op: "chmod", Path: dir, Err: err}
		}
	}
	return nil
}
