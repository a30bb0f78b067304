package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/admin"
)

func (a *app) unmountCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "unmount DIR",
		Short: "Unmount an overlay that materialize --mount mounted and release its layers",
		Long: `unmount undoes "materialize --mount DIR": it unmounts the overlay at DIR
(needs root) and ends the mount lease recorded in the root, so that gc and the
overlay budget may remove its layers again. It refuses a DIR that no mount
lease names (exit code 3): it never unmounts what blobctl did not mount. A
lease whose overlay was unmounted by other means is released too (and gc drops
such stale leases by itself). It works while another process holds the root,
through its admin socket.`,
		Example: `  sudo blobctl unmount /mnt/alpine`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if os.Geteuid() != 0 {
				return usagef("unmount needs root (CAP_SYS_ADMIN)")
			}
			dir, err := filepath.Abs(args[0])
			if err != nil {
				return usageError{err}
			}
			if r, err := filepath.EvalSymlinks(dir); err == nil {
				dir = r
			}
			// Opened to look (and to release the lease): a mistyped --root
			// is refused, and no budget pass runs here.
			adm, err := a.openInspect(ctx)
			if err != nil {
				return err
			}
			defer adm.Close()
			mounts, err := adm.Mounts(ctx)
			if err != nil {
				return err
			}
			var lease *admin.MountRecord
			for i := range mounts {
				if mounts[i].Target == dir {
					lease = &mounts[i]
				}
			}
			if lease == nil {
				return fmt.Errorf("%s: %w: no mount lease names it (blobctl unmounts only what materialize --mount mounted; use umount for anything else)", dir, blob.ErrNotFound)
			}
			// The lease names dir, so the overlay there is the one blobctl
			// mounted (or a later one over it, which goes first).
			err = unix.Unmount(dir, unix.UMOUNT_NOFOLLOW)
			switch {
			case err == nil:
			case errors.Is(err, unix.EINVAL):
				// Not a mount point any more: unmounted by other means.
			case errors.Is(err, unix.EBUSY):
				return fmt.Errorf("unmount %s: a process still uses it (its working directory or an open file is there); the lease stays", dir)
			default:
				return fmt.Errorf("unmount %s: %w; the lease stays", dir, err)
			}
			rec, err := adm.ReleaseMount(ctx, dir)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(rec)
			}
			fmt.Fprintf(a.stdout, "unmounted %s (%s); released %d layers\n", rec.Target, orDash(rec.Image), len(rec.Layers))
			return nil
		},
	}
}
