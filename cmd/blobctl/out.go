package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// outFile is a checked --out destination: a file path, or stdout ("-").
type outFile struct {
	arg    string // as given, for messages
	path   string // absolute; empty for stdout
	stdout bool
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
// placed: "reflink" (a copy-on-write clone), "hardlink" (the same file;
// only when keep is false), "copy" (sparse) or "stdout".
//
// Unless keep, release is called once the image's bytes are in o (or
// linked there) and before o is made writable: it removes the local
// handout, so that no second full copy stays behind and a hard-linked
// --out shares its inode with nobody. A file is written 0600 (the image
// holds every file of a possibly private image) under a temporary name in
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
	switch {
	case unix.IoctlFileClone(int(tmp.Fd()), int(in.Fd())) == nil:
		how = "reflink"
	case !keep && os.Link(src, name+".link") == nil:
		// The handout itself; release removes its other name below.
		how = "hardlink"
		tmp.Close()
		os.Remove(name)
		name = tmp.Name() + ".link"
		tmp = nil
	default:
		how = "copy"
		if err = sparseCopy(tmp, in); err != nil {
			tmp.Close()
			return 0, "", fmt.Errorf("--out %s: %w", o.arg, unwrapPath(err))
		}
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

// sparseCopy copies in to out from offset 0, leaving holes for all-zero
// 64 KiB blocks, and sets out's size to in's.
func sparseCopy(out, in *os.File) error {
	buf := make([]byte, 64<<10)
	zero := make([]byte, len(buf))
	var off int64
	for {
		n, rerr := io.ReadFull(in, buf)
		if n > 0 {
			if !bytes.Equal(buf[:n], zero[:n]) {
				if _, err := out.WriteAt(buf[:n], off); err != nil {
					return err
				}
			}
			off += int64(n)
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	return out.Truncate(off)
}
