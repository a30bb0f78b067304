package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/materialize/ext4"
)

// outFile is a checked --out destination: a file path, or stdout ("-").
type outFile struct {
	arg    string // as given, for messages
	path   string // absolute; empty for stdout
	stdout bool
	// link: hand out the cached image itself, a read-only hard link
	// (0400), instead of a writable copy (--link).
	link bool
}

// checkOut validates --out before any work is done, so a bad path fails
// at once instead of after a conversion: "-" means stdout (refused when
// stdout is a terminal); otherwise the parent directory must exist and be
// writable, and the path must not be a directory. A file or a symlink at
// the path is replaced (never followed) when the image is written.
func checkOut(out string, stdout io.Writer) (*outFile, error) {
	if out == "-" {
		if isTerminal(stdout) {
			return nil, usagef("--out -: stdout is a terminal; redirect it to a file or a pipe, or give --out FILE")
		}
		return &outFile{arg: out, stdout: true}, nil
	}
	abs, err := filepath.Abs(out)
	if err != nil {
		return nil, usagef("--out %s: %v", out, err)
	}
	dir := filepath.Dir(abs)
	switch fi, err := os.Stat(dir); {
	case errors.Is(err, fs.ErrNotExist):
		return nil, usagef("--out %s: the directory %s does not exist; create it first", out, dir)
	case err != nil:
		return nil, usagef("--out %s: cannot use the directory %s: %v", out, dir, unwrapPath(err))
	case !fi.IsDir():
		return nil, usagef("--out %s: %s is not a directory", out, dir)
	}
	if err := unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
		return nil, usagef("--out %s: cannot create files in %s (%v)", out, dir, err)
	}
	if fi, err := os.Lstat(abs); err == nil && fi.IsDir() {
		return nil, usagef("--out %s: is a directory; give a file name, such as %s", out, filepath.Join(out, "image.ext4"))
	}
	return &outFile{arg: out, path: abs}, nil
}

// unwrapPath drops the path of a *fs.PathError (the message names it).
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// write puts the image at src into o and returns its size and how it was
// placed (ext4.Placed*: a reflink, a copy_file_range of the data extents,
// a sparse copy, or with o.link a hard link of the cached image), or
// "stdout".
//
// Unless keep, release is called once the image's bytes are in o: it
// removes the local handout, so that no second copy stays behind. A file
// of its own is written 0600 (the image holds every file of a possibly
// private image); with o.link, --out is the cached image itself, 0400,
// and must stay unwritten. Either is written under a temporary name in
// its directory and renamed over the path: an existing file is replaced
// atomically, a symlink is replaced and not followed, and a failure
// leaves nothing behind.
func (o *outFile) write(src string, keep bool, stdout io.Writer, release func() error) (size int64, how string, err error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, "", err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return 0, "", err
	}
	size = fi.Size()
	if o.stdout {
		if _, err := io.Copy(stdout, in); err != nil {
			return 0, "", fmt.Errorf("%w: %w", errOutput, err)
		}
		if !keep {
			if err := release(); err != nil {
				return 0, "", err
			}
		}
		return size, "stdout", nil
	}

	if o.link {
		// The cached image itself, read-only: no bytes written. CopyOut
		// copies instead (still 0400) where it cannot link.
		if how, err = ext4.CopyOut(src, o.path, 0o400); err != nil {
			return 0, "", fmt.Errorf("--out %s: %w", o.arg, unwrapPath(err))
		}
		if !keep {
			if err := release(); err != nil {
				return 0, "", err
			}
		}
		return size, how, nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(o.path), "."+filepath.Base(o.path)+".tmp-*")
	if err != nil {
		return 0, "", fmt.Errorf("--out %s: %w", o.arg, unwrapPath(err))
	}
	name := tmp.Name()
	defer func() {
		if err != nil {
			os.Remove(name)
		}
	}()
	// Never a hard link of the handout: it may be the disk tier's own file
	// of the derived blob (ext4.Config.Stager), which --out's 0600 would
	// make writable. CopyFile clones where the file system can, else
	// copies the data extents in the kernel, keeping holes.
	if how, err = ext4.CopyFile(tmp, in); err != nil {
		tmp.Close()
		return 0, "", fmt.Errorf("--out %s: %w", o.arg, unwrapPath(err))
	}
	if tmp != nil {
		if err = tmp.Close(); err != nil {
			return 0, "", fmt.Errorf("--out %s: %w", o.arg, unwrapPath(err))
		}
	}
	if !keep {
		if err = release(); err != nil {
			return 0, "", err
		}
	}
	if err = os.Chmod(name, 0o600); err != nil {
		return 0, "", fmt.Errorf("--out %s: %w", o.arg, unwrapPath(err))
	}
	if err = os.Rename(name, o.path); err != nil {
		return 0, "", fmt.Errorf("--out %s: %w", o.arg, unwrapPath(err))
	}
	return size, how, nil
}
