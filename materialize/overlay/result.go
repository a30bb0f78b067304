package overlay

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Result is a materialized image.
type Result struct {
	// LowerDirs are the absolute paths of the layer directories in
	// overlayfs lowerdir order: the TOPMOST layer (the manifest's last)
	// FIRST, the base layer last. An image of fewer than two layers gets
	// empty directories appended, because overlayfs needs two lower layers
	// without an upper one.
	// A layer that appears more than once in the image is listed once, at
	// its topmost position (the lower copy adds nothing the upper does not).
	LowerDirs []string
	// MountOptions is "lowerdir=<id>:<id>:...[,userxattr]" with paths
	// RELATIVE to MountDir (short symlinks to LowerDirs), in the same order;
	// it stays under the kernel's page-size limit for any image overlayfs
	// accepts. Mount with the working directory at MountDir (Result.Mount
	// does), and add upperdir/workdir with absolute paths.
	MountOptions string
	// MountDir is the directory MountOptions' paths are relative to.
	MountDir string
	// Lease keeps the layer directories from eviction until released.
	Lease *Lease
}

// Lease keeps layer directories from being evicted. Release is idempotent
// and safe for concurrent use.
type Lease struct {
	m       *Materializer
	entries []*layerEntry
	once    sync.Once
}

// Release ends the lease; its layers may be evicted afterwards.
func (l *Lease) Release() {
	if l == nil {
		return
	}
	l.once.Do(func() {
		l.m.release(l.entries)
		l.m.evict()
	})
}

// Mount mounts the overlay of r at target (a directory), read-only unless
// extra supplies an upperdir. extra holds further overlay options such as
// "upperdir=/abs/upper" and "workdir=/abs/work"; their paths must be
// absolute. The mount runs on a dedicated OS thread whose working directory
// is r.MountDir (so the relative MountOptions resolve), leaving the
// process's working directory alone. The caller unmounts. Needs
// CAP_SYS_ADMIN.
func (r *Result) Mount(target string, extra ...string) error {
	target, err := filepath.Abs(target)
	if err != nil {
		return fmt.Errorf("overlay: mount target: %w", err)
	}
	opts := r.MountOptions
	flags := uintptr(unix.MS_RDONLY)
	for _, o := range extra {
		k, v, _ := strings.Cut(o, "=")
		switch k {
		case "upperdir", "workdir":
			if !filepath.IsAbs(v) {
				return fmt.Errorf("overlay: mount option %s needs an absolute path", k)
			}
			if k == "upperdir" {
				flags = 0
			}
		case "lowerdir":
			return fmt.Errorf("overlay: mount option lowerdir is set by the Result")
		}
		opts += "," + o
	}
	if len(opts) >= os.Getpagesize() {
		return fmt.Errorf("overlay: mount options are %d bytes, over the %d-byte page limit", len(opts), os.Getpagesize())
	}
	errc := make(chan error, 1)
	go func() {
		// This thread's working directory is changed; it is never unlocked,
		// so the runtime discards the thread when the goroutine ends.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare CLONE_FS: %w", err)
			return
		}
		if err := unix.Chdir(r.MountDir); err != nil {
			errc <- fmt.Errorf("chdir %s: %w", r.MountDir, err)
			return
		}
		errc <- unix.Mount("overlay", target, "overlay", flags, opts)
	}()
	if err := <-errc; err != nil {
		return fmt.Errorf("overlay: mount at %s: %w", target, err)
	}
	return nil
}
