package overlay

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

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
