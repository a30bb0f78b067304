package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Scratch filesystem modes (-scratch).
const (
	scratchAuto = "auto" // loop when possible, else dir
	scratchLoop = "loop" // a fresh journaled ext4 on a loop device; fail if impossible
	scratchDir  = "dir"  // the -work directory's own filesystem
)

// scratchFS is where a run's jobs write.
type scratchFS struct {
	Dir  string // the directory to work in
	Desc string // what it is, for the report
	// journaled: the run's own fresh journaled ext4 (see keepJobs).
	journaled bool
	// close unmounts and deletes what the run made.
	close func()
}

// loopSize is the size of the loop filesystem's backing file: room for
// the registry, the primed caches and the largest job (a full run needs
// under 4 GiB at once, as finished jobs are deleted).
const loopSize = 16 << 30

// openScratch prepares the filesystem the run's jobs write to.
//
// By default (auto) it is a fresh ext4 with a journal, made on a preallocated file
// under parent and loop-mounted, when this process may mount (root, mkfs.ext4
// installed). Every run then starts from the same empty filesystem, so what
// earlier runs, tests or other programs left behind on the machine's own disk
// does not leak into the figures. One such leak is large: on ext4 without a
// journal the inode allocator passes over every inode deleted in the last 60
// to 360 s (recently_deleted in fs/ext4/ialloc.c), and creating 20k files
// right after deleting 20k others took 21 s instead of 1.1 s on the machines
// this harness was written on, whose root filesystem is such an ext4.
func openScratch(ctx context.Context, parent, mode string, log io.Writer) (*scratchFS, error) {
	switch mode {
	case scratchDir:
		return dirScratch(parent)
	case scratchAuto, scratchLoop:
		s, err := loopScratch(ctx, parent)
		if err == nil {
			return s, nil
		}
		if mode == scratchLoop {
			return nil, err
		}
		fmt.Fprintf(log, "harness: no scratch filesystem of its own (%v): working in %s\n", err, dirOrTemp(parent))
		return dirScratch(parent)
	}
	return nil, fmt.Errorf("unknown -scratch %q (want auto, loop or dir)", mode)
}

func dirOrTemp(parent string) string {
	if parent == "" {
		return os.TempDir()
	}
	return parent
}

func dirScratch(parent string) (*scratchFS, error) {
	dir, err := os.MkdirTemp(parent, "strata-bench-")
	if err != nil {
		return nil, err
	}
	return &scratchFS{Dir: dir, Desc: "a directory on " + describeFS(dir), close: func() { removeAndSync(dir) }}, nil
}

func loopScratch(ctx context.Context, parent string) (*scratchFS, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("mounting needs root")
	}
	for _, bin := range []string{"mkfs.ext4", "losetup", "mount", "umount"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s is not installed", bin)
		}
	}
	base, err := os.MkdirTemp(parent, "strata-bench-fs-")
	if err != nil {
		return nil, err
	}
	img, mnt := filepath.Join(base, "fs.img"), filepath.Join(base, "mnt")
	fail := func(err error) (*scratchFS, error) {
		os.RemoveAll(base)
		return nil, err
	}
	if err := os.Mkdir(mnt, 0o700); err != nil {
		return fail(err)
	}
	f, err := os.OpenFile(img, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		return fail(err)
	}
	// Allocated up front, so that no job pays for growing a sparse file.
	err = unix.Fallocate(int(f.Fd()), 0, 0, loopSize)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(err)
	}
	// mkfs.ext4's defaults: a journal, as on a typical executor's disk.
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "strata-bench", img).CombinedOutput(); err != nil {
		return fail(fmt.Errorf("mkfs.ext4: %v: %s", err, strings.TrimSpace(string(out))))
	}
	// Direct I/O: the backing file's pages do not pile up in the page cache
	// beside the scratch filesystem's own (the run writes gigabytes, and the
	// memory pressure that built up slowed later repetitions by up to 2x).
	out, err := exec.CommandContext(ctx, "losetup", "--find", "--show", "--direct-io=on", img).CombinedOutput()
	if err != nil {
		return fail(fmt.Errorf("losetup: %v: %s", err, strings.TrimSpace(string(out))))
	}
	dev := strings.TrimSpace(string(out))
	if out, err := exec.CommandContext(ctx, "mount", "-t", "ext4", dev, mnt).CombinedOutput(); err != nil {
		exec.Command("losetup", "-d", dev).Run()
		return fail(fmt.Errorf("mount %s: %v: %s", dev, err, strings.TrimSpace(string(out))))
	}
	unmount := func() {
		for i := 0; i < 50; i++ {
			if exec.Command("umount", mnt).Run() == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		exec.Command("losetup", "-d", dev).Run()
		os.RemoveAll(base)
	}
	dir := filepath.Join(mnt, "work")
	if err := os.Mkdir(dir, 0o700); err != nil {
		unmount()
		return nil, err
	}
	return &scratchFS{journaled: true, Dir: dir, Desc: fmt.Sprintf("a fresh ext4 (journaled, mkfs.ext4 defaults) of %d GiB on a loop device (direct I/O), backed by a preallocated file on %s", loopSize>>30, describeFS(base)), close: unmount}, nil
}

// describeFS names the filesystem dir is on, and whether an ext4 one has
// a journal.
func describeFS(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "an unknown filesystem"
	}
	switch st.Type {
	case unix.EXT4_SUPER_MAGIC:
		if j := ext4Journal(dir); j != "" {
			return "ext4 (" + j + ")"
		}
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	}
	return fmt.Sprintf("a filesystem of type %#x", st.Type)
}

// ext4Journal says whether the ext4 filesystem holding dir has a journal,
// from /proc/fs/jbd2 (one entry per journaled device), or "" when unknown.
func ext4Journal(dir string) string {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return ""
	}
	major, minor := unix.Major(st.Dev), unix.Minor(st.Dev)
	dev := ""
	if b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/uevent", major, minor)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "DEVNAME="); ok {
				dev = v
			}
		}
	}
	if dev == "" {
		return ""
	}
	entries, err := os.ReadDir("/proc/fs/jbd2")
	if err != nil {
		return "no journal"
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), dev+"-") {
			return "journaled"
		}
	}
	return "no journal"
}
