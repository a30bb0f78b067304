package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/strata-oci/strata/materialize"
)

type overlayResult struct {
	Reference    string   `json:"reference"`
	Digest       string   `json:"digest"`
	LowerDirs    []string `json:"lower_dirs"`
	MountOptions string   `json:"mount_options"`
	MountDir     string   `json:"mount_dir"`
	Mounted      string   `json:"mounted,omitempty"`
}

type ext4Result struct {
	Reference string `json:"reference"`
	Digest    string `json:"digest"`
	Ext4      string `json:"ext4_digest"`
	Out       string `json:"out"`
	Size      int64  `json:"size"`
	FromCache bool   `json:"from_cache"`
}

func (a *app) materializeCommand() *cobra.Command {
	var format, mountDir, out string
	cmd := &cobra.Command{
		Use:   "materialize IMAGE --format overlay|ext4",
		Short: "Turn an image into overlayfs lower dirs or an ext4 disk image",
		Long: `Materialize fetches IMAGE (like fetch) and turns it into what a sandbox needs.

--format overlay extracts each layer once into its own directory under the
overlay root and prints the lower dirs in overlayfs mount order (topmost layer
first). With --mount DIR it also mounts the read-only merged view at DIR
(needs root; unmount with "umount DIR"). The layer directories are leased only
while blobctl runs: a mounted view stays valid until "blobctl gc" or the overlay
budget evicts its layers.

--format ext4 builds the flattened image as an ext4 filesystem (rootless, no
mount) and writes it to --out FILE (sparse). The image is stored through the
tiers as a derived blob, so the next call here, or on any host sharing the
remote tier, downloads it instead of converting again.`,
		Example: `  blobctl materialize docker.io/library/alpine:3.20 --format overlay
  sudo blobctl materialize docker.io/library/alpine:3.20 --format overlay --mount /mnt/alpine
  blobctl materialize docker.io/library/alpine:3.20 --format ext4 --out alpine.ext4
  blobctl --allow-cidr 127.0.0.0/8 materialize 127.0.0.1:5055/strata/sample:latest --format ext4 --out sample.ext4 --json`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
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
			case "":
				return usagef("--format is required: overlay or ext4")
			default:
				return usagef("unknown --format %q: want overlay or ext4", format)
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
			img, err := h.Fetcher().FetchImage(ctx, args[0], cred)
			if err != nil {
				return err
			}
			mimg := materialize.Fetched(img)
			if format == "overlay" {
				res, err := h.Overlay().Materialize(ctx, mimg)
				if err != nil {
					return err
				}
				defer res.Lease.Release()
				r := overlayResult{Reference: img.Reference.String(), Digest: img.Digest.String(), LowerDirs: res.LowerDirs, MountOptions: res.MountOptions, MountDir: res.MountDir}
				if mountDir != "" {
					abs, err := filepath.Abs(mountDir)
					if err != nil {
						return err
					}
					if err := os.MkdirAll(abs, 0o755); err != nil {
						return err
					}
					if err := res.Mount(abs); err != nil {
						return fmt.Errorf("mount %s: %w", abs, err)
					}
					r.Mounted = abs
				}
				if a.json {
					return a.printJSON(r)
				}
				for _, d := range r.LowerDirs {
					fmt.Fprintln(a.stdout, d)
				}
				if r.Mounted != "" {
					fmt.Fprintf(a.stderr, "mounted %s read-only at %s (umount %s when done)\n", r.Reference, r.Mounted, r.Mounted)
				}
				return nil
			}
			res, err := h.Ext4For(img).Materialize(ctx, mimg, nil)
			if err != nil {
				return err
			}
			size, err := copySparse(out, res.Path)
			if err != nil {
				return err
			}
			r := ext4Result{Reference: img.Reference.String(), Digest: img.Digest.String(), Ext4: res.Digest.String(), Out: out, Size: size, FromCache: res.FromCache}
			if a.json {
				return a.printJSON(r)
			}
			how := "converted"
			if r.FromCache {
				how = "from cache"
			}
			fmt.Fprintf(a.stdout, "wrote %s: ext4 image of %s (%s, %s, %s)\n", r.Out, r.Reference, humanBytes(r.Size), r.Ext4, how)
			return nil
		},
	}
	cmd.Flags().StringVar(&format, "format", "", "overlay or ext4")
	cmd.Flags().StringVar(&mountDir, "mount", "", "with --format overlay: also mount the read-only merged view at `DIR` (root only)")
	cmd.Flags().StringVar(&out, "out", "", "with --format ext4: write the image to `FILE`")
	return cmd
}

// copySparse copies src to dst (temp file, then rename), leaving holes for
// all-zero 64 KiB blocks.
func copySparse(dst, src string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	buf := make([]byte, 64<<10)
	zero := make([]byte, len(buf))
	var off int64
	for {
		n, rerr := io.ReadFull(in, buf)
		if n > 0 {
			if !bytes.Equal(buf[:n], zero[:n]) {
				if _, err := tmp.WriteAt(buf[:n], off); err != nil {
					tmp.Close()
					return 0, err
				}
			}
			off += int64(n)
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			tmp.Close()
			return 0, rerr
		}
	}
	if err := tmp.Truncate(off); err != nil {
		tmp.Close()
		return 0, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return 0, err
	}
	if err := tmp.Close(); err != nil {
		return 0, err
	}
	return off, os.Rename(tmp.Name(), dst)
}
