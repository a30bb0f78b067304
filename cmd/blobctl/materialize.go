package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

type overlayResult struct {
	Reference    string   `json:"reference"`
	Digest       string   `json:"digest"`
	Platform     string   `json:"platform"`
	LowerDirs    []string `json:"lower_dirs"`
	MountOptions string   `json:"mount_options"`
	MountDir     string   `json:"mount_dir"`
	Mounted      string   `json:"mounted,omitempty"`
}

type ext4Result struct {
	Reference string `json:"reference"`
	Digest    string `json:"digest"`
	Ext4      string `json:"ext4_digest"`
	Platform  string `json:"platform"`
	Out       string `json:"out"`
	Size      int64  `json:"size"`
	FromCache bool   `json:"from_cache"`
	// Placed says how --out got the image: reflink, hardlink, copy or
	// stdout.
	Placed string `json:"placed"`
}

func (a *app) materializeCommand() *cobra.Command {
	var format, mountDir, out string
	var keep, link bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "materialize IMAGE --format overlay|ext4",
		Short: "Turn an image into overlayfs lower dirs or an ext4 disk image",
		Long: `Materialize fetches IMAGE (like fetch) and turns it into what a sandbox needs.

--format overlay extracts each layer once into its own directory under the
overlay root and prints the lower dirs in overlayfs mount order (topmost layer
first). With --mount DIR it also mounts the read-only merged view at DIR
(needs root; unmount with "blobctl unmount DIR"). DIR is created if missing; it must be
a directory (not a symlink, which is never followed) owned by root or the
caller, and not already a mount point. The mount is recorded in the root
as a mount lease: gc and the overlay budget keep its layers until "blobctl
unmount DIR" (or until the mount is found gone, if unmounted otherwise).

--format ext4 builds the flattened image as an ext4 filesystem (rootless, no
mount) and writes it to --out FILE, mode 0600 (it holds the image's files).
FILE is checked before any work: its directory must exist and be writable,
and FILE must not be a directory. An existing FILE is replaced atomically; a
symlink there is replaced, not followed. FILE gets the image by reflink where
the filesystem allows, else by hard link, else by a sparse copy, and the
image handed out in ext4-dir is removed (no second full copy stays; --keep
keeps it). --out - writes the image to stdout, the summary to stderr. The
image is stored through the tiers as a derived blob, so the next call here,
or on any host sharing the remote tier, downloads it instead of converting
again.

The output names the platform the image is built for (from its config); when
it is not the requested --platform, materialize warns on stderr.`,
		Example: `  blobctl materialize docker.io/library/alpine:3.20 --format overlay
  sudo blobctl materialize docker.io/library/alpine:3.20 --format overlay --mount /mnt/alpine
  blobctl materialize docker.io/library/alpine:3.20 --format ext4 --out alpine.ext4
  blobctl materialize docker.io/library/alpine:3.20 --format ext4 --out - | gzip > alpine.ext4.gz
  blobctl --allow-cidr 127.0.0.0/8 materialize 127.0.0.1:5055/strata/sample:latest --format ext4 --out sample.ext4 --json`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			a.image = args[0]
			ctx, cancel := withTimeout(cmd.Context(), timeout)
			defer cancel()
			defer func() { err = timedOut(ctx, cmd.Context(), timeout, err) }()
			switch format {
			case "overlay":
				if out != "" {
					return usagef("--out is for --format ext4; overlay prints its lower dirs")
				}
				if mountDir != "" && os.Geteuid() != 0 {
					return usagef("--mount needs root (CAP_SYS_ADMIN); run without --mount to get the lower dirs")
				}
			case "ext4":
				if out == "" {
					return usagef("--format ext4 needs --out FILE")
				}
				if mountDir != "" {
					return usagef("--mount is for --format overlay")
				}
				if out == "-" && a.json {
					return usagef("--out - writes the image to stdout; --json would mix records into it (print to a file instead)")
				}
			case "":
				return usagef("--format is required: overlay or ext4")
			default:
				return usagef("unknown --format %q: want overlay or ext4", format)
			}
			var dst *outFile
			if out != "" {
				// Checked before any work: a bad --out fails at once, not
				// after a conversion.
				if dst, err = checkOut(out, a.stdout); err != nil {
					return err
				}
				if link && dst.stdout {
					return usagef("--link needs a file for --out, not stdout")
				}
				dst.link = link
			} else if link {
				return usagef("--link needs --out FILE")
			}
			var target *mountTarget
			if mountDir != "" {
				// Checked and held open before any work: the mount goes onto
				// this directory even if the path is swapped meanwhile.
				var err error
				if target, err = openMountTarget(mountDir); err != nil {
					return err
				}
				defer target.Close()
			}
			cred, err := a.credential()
			if err != nil {
				return err
			}
			h, _, err := a.openHost(ctx)
			if err != nil {
				return err
			}
			defer h.Close()
			start := time.Now()
			prog := a.newProgress(ctx)
			defer prog.close()
			prog.stepf("resolving %s", args[0])
			img, err := h.Fetcher().FetchImage(ctx, args[0], cred)
			if err != nil {
				return err
			}
			a.checkPlatform(img)
			mimg := img
			if format == "overlay" {
				prog.stepf("extracting the layers of %s", img.Reference)
				res, err := h.Overlay().Materialize(ctx, progressImage{Image: mimg, p: prog, verb: "extract"})
				prog.close()
				if err != nil {
					return err
				}
				if prog.on() {
					fmt.Fprintf(a.stderr, "materialized %s: %d layers in %.1fs\n", img.Reference, len(img.Layers()), time.Since(start).Seconds())
				}
				defer res.Lease.Release()
				r := overlayResult{Reference: img.Reference.String(), Digest: img.Digest().String(), Platform: imagePlatform(img), LowerDirs: res.LowerDirs, MountOptions: res.MountOptions, MountDir: res.MountDir}
				if target != nil {
					if err := res.Mount(target.fdPath()); err != nil {
						return fmt.Errorf("mount %s: %w", target.path, err)
					}
					r.Mounted = target.path
					// A mount lease in the root keeps its layers from gc and
					// eviction after blobctl exits, until "blobctl unmount".
					if _, err := h.Overlay().RecordMount(res, target.fdPath(), r.Reference); err != nil {
						_ = unix.Unmount(target.path, unix.UMOUNT_NOFOLLOW)
						return fmt.Errorf("mount %s: %w (unmounted again)", target.path, err)
					}
				}
				if a.json {
					return a.printJSON(r)
				}
				for _, d := range r.LowerDirs {
					fmt.Fprintln(a.stdout, d)
				}
				if r.Mounted != "" {
					fmt.Fprintf(a.stderr, "mounted %s read-only at %s (blobctl unmount %s when done)\n", r.Reference, r.Mounted, r.Mounted)
				}
				return nil
			}
			prog.stepf("building the ext4 image of %s", img.Reference)
			res, err := h.Ext4().Materialize(ctx, progressImage{Image: mimg, p: prog, verb: "convert"}, nil)
			if err != nil {
				return err
			}
			// The handout in ext4-dir is not kept unless --keep: --out gets
			// its copy (a reflink or in-kernel copy where the file system
			// allows; with --link the cached file itself) and the handout
			// is removed.
			release := func() error { return h.Ext4().Cleanup(context.WithoutCancel(ctx), mimg, nil) }
			prog.stepf("writing %s", out)
			size, placed, err := dst.write(res.Path, keep, a.stdout, release)
			if err == nil {
				// The shared tier receives a converted image in the
				// background (ext4.Config.Stager); wait for it, or Close
				// would cancel it. Its failure is the converter's to count
				// and log, not this command's.
				prog.stepf("storing the image of %s in the shared tier", img.Reference)
				_ = h.Ext4().Flush(ctx)
			}
			prog.close()
			if err != nil {
				return err
			}
			// A conversion hands its image out before hashing it; the
			// hash has ended with the Flush above. Its failure, which
			// leaves the digest empty, is the converter's to log.
			derived, _ := res.Hashed(ctx)
			r := ext4Result{Reference: img.Reference.String(), Digest: img.Digest().String(), Platform: imagePlatform(img), Ext4: derived.String(), Out: out, Size: size, FromCache: res.FromCache, Placed: placed}
			if a.json {
				return a.printJSON(r)
			}
			how := "converted"
			if r.FromCache {
				how = "from cache"
			}
			w, name := a.stdout, r.Out
			if dst.stdout {
				w, name = a.stderr, "stdout"
			}
			fmt.Fprintf(w, "wrote %s: ext4 image of %s (%s, %s, %s, %s)\n", name, r.Reference, r.Platform, humanBytes(r.Size), r.Ext4, how)
			return nil
		},
	}
	cmd.Flags().StringVar(&format, "format", "", "overlay or ext4")
	cmd.Flags().StringVar(&mountDir, "mount", "", "with --format overlay: also mount the read-only merged view at `DIR` (root only)")
	cmd.Flags().StringVar(&out, "out", "", "with --format ext4: write the image to `FILE` (mode 0600; - for stdout)")
	cmd.Flags().BoolVar(&link, "link", false, "with --out FILE: make FILE the cached image itself, a read-only (0400) hard link where it can be, instead of a writable copy; never write to it")
	cmd.Flags().BoolVar(&keep, "keep", false, "with --format ext4: also keep the handout in ext4-dir (handed to later calls without a download)")
	cmd.Flags().DurationVar(&timeout, "timeout", defaultTimeout, "give up after this long (0: no limit)")
	return cmd
}

// errMountTarget marks a --mount DIR that is refused.
var errMountTarget = errors.New("refusing --mount target")

// mountTarget is a --mount directory held open by an O_PATH descriptor.
type mountTarget struct {
	path string // absolute, as given (for messages and the result)
	f    *os.File
}

// openMountTarget creates dir if it is missing (0755, parents too) and opens
// it without following a symlink at dir. It refuses, with a usage error
// wrapping errMountTarget, a dir that is a symlink or not a directory, one
// that belongs to a user other than root or this one, and one that already
// is a mount point (the overlay would hide what is mounted there). The
// returned target stays the directory checked whatever happens to the path
// afterwards.
func openMountTarget(dir string) (*mountTarget, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
		return nil, err
	}
	if err := os.Mkdir(abs, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	fd, err := unix.Open(abs, unix.O_PATH|unix.O_NOFOLLOW|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		var st unix.Stat_t
		switch {
		case unix.Lstat(abs, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK:
			return nil, usageError{fmt.Errorf("%w %s: it is a symlink (symlinks are not followed; give the directory itself)", errMountTarget, abs)}
		case errors.Is(err, unix.ENOTDIR):
			return nil, usageError{fmt.Errorf("%w %s: not a directory", errMountTarget, abs)}
		}
		return nil, &fs.PathError{Op: "open", Path: abs, Err: err}
	}
	t := &mountTarget{path: abs, f: os.NewFile(uintptr(fd), abs)}
	if err := t.check(); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// check applies openMountTarget's rules to the open descriptor.
func (t *mountTarget) check() error {
	fd := int(t.f.Fd())
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE|unix.STATX_UID, &stx); err != nil {
		return &fs.PathError{Op: "statx", Path: t.path, Err: err}
	}
	if stx.Mode&unix.S_IFMT != unix.S_IFDIR {
		return usageError{fmt.Errorf("%w %s: not a directory", errMountTarget, t.path)}
	}
	if uid := int(stx.Uid); uid != 0 && uid != os.Geteuid() {
		return usageError{fmt.Errorf("%w %s: it belongs to uid %d, not to root or this user (another user could swap what is mounted there)", errMountTarget, t.path, uid)}
	}
	mounted, err := isMountPoint(fd, &stx)
	if err != nil {
		return &fs.PathError{Op: "statx", Path: t.path, Err: err}
	}
	if mounted {
		return usageError{fmt.Errorf("%w %s: it is already a mount point (the overlay would hide what is mounted there; unmount it or use an empty directory)", errMountTarget, t.path)}
	}
	return nil
}

// isMountPoint reports whether the directory open at fd (stx its statx) is
// the root of a mount: from STATX_ATTR_MOUNT_ROOT where the kernel reports
// it (Linux 5.8), else by comparing its device with its parent's (which
// misses a bind mount from the same filesystem).
func isMountPoint(fd int, stx *unix.Statx_t) (bool, error) {
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 {
		return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
	}
	var self, parent unix.Stat_t
	if err := unix.Fstat(fd, &self); err != nil {
		return false, err
	}
	if err := unix.Fstatat(fd, "..", &parent, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return false, err
	}
	return self.Dev != parent.Dev || self.Ino == parent.Ino, nil
}

// fdPath is the path through which a mount lands on the directory held
// open, not on whatever the original path names by then.
func (t *mountTarget) fdPath() string { return fmt.Sprintf("/proc/self/fd/%d", t.f.Fd()) }

// Close releases the descriptor.
func (t *mountTarget) Close() error { return t.f.Close() }
