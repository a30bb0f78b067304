package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/internal/admin"
	"github.com/strata-oci/strata/registry/credential"
	"github.com/strata-oci/strata/tiers/disk"
)

// defaultTimeout bounds one fetch or materialize: far above what a large
// image takes on a working link, short enough that a registry that keeps a
// download crawling just above the client's minimum rate cannot hold the
// command for hours.
const defaultTimeout = 30 * time.Minute

// withTimeout is context.WithTimeout, with 0 meaning no limit.
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// timedOut says so when err ended a command whose --timeout d (the
// deadline of ctx, derived from parent) had passed.
func timedOut(ctx, parent context.Context, d time.Duration, err error) error {
	if err == nil || d <= 0 || !errors.Is(ctx.Err(), context.DeadlineExceeded) || parent.Err() != nil {
		return err
	}
	return fmt.Errorf("gave up after --timeout %s: %w", d, err)
}

// fetchResult and fetchRecord are what fetch prints.
type (
	fetchResult = admin.FetchResult
	fetchRecord = admin.FetchRecord
)

// warmer is what fetch needs: *admin.Local, or the *admin.Client of the
// process holding the root.
type warmer interface {
	Warm(ctx context.Context, ref string, cred credential.Credential, parallel int, hooks *admin.WarmHooks) (*admin.FetchResult, error)
	Close() error
}

func (a *app) fetchCommand() *cobra.Command {
	var parallel int
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "fetch IMAGE",
		Short: "Fetch an image into the tiers and read every layer through",
		Long: `Fetch resolves IMAGE, proves access at the registry (or reuses a valid proof),
reads the manifest and config, and reads every layer to the end, so that all of
the image is in the local tiers afterwards (the cache is warm).

For each blob it prints its digest, the tier that served it ("registry" when it
came from the registry), its size and, for layers, the read time (--quiet:
only the summary). The downloads show their progress on stderr: bars when
stderr is a terminal, one line per layer with --progress plain (for logs),
nothing with --progress none, also when another process holding the root
does the work (it reports its progress over the admin socket).

The summary names the platform the image is built for, from its config. When
that is not the requested --platform (a reference to a single-platform image
is served whatever --platform says), fetch warns on stderr. With --platform
all, fetch reads every platform image of a multi-platform index.

Credentials: --username with --password-stdin, else the config's per-registry
credentials, else the Docker keychain when "keychain: true", else anonymous.

When another process holds the root, fetch asks it to fetch over its admin
socket, with that process's configuration (platform, network policy,
configured credentials); --username/--password-stdin travel over the
owner-only socket and are never printed.`,
		Example: `  blobctl fetch docker.io/library/alpine:3.20
  blobctl --allow-cidr 127.0.0.0/8 fetch 127.0.0.1:5055/strata/sample:latest --json
  echo "$TOKEN" | blobctl fetch ghcr.io/acme/app:v1 --username acme --password-stdin
  blobctl --platform linux/arm64 fetch docker.io/library/alpine:3.20
  blobctl --platform all fetch docker.io/library/alpine:3.20
  blobctl fetch docker.io/library/alpine:3.20 --progress plain
  blobctl fetch docker.io/library/alpine:3.20 --quiet`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			a.image = args[0]
			ctx, cancel := withTimeout(cmd.Context(), timeout)
			defer cancel()
			defer func() { err = timedOut(ctx, cmd.Context(), timeout, err) }()
			cred, err := a.credential()
			if err != nil {
				return err
			}
			all := a.cfg.Platform == platformAll
			if all {
				a.cfg.Platform = "" // the first fetch resolves the index
			}
			adm, err := a.openAdmin(ctx)
			if err != nil {
				return err
			}
			w := adm.(warmer) // *strata.Host or *admin.Client
			defer w.Close()
			res, err := a.fetch(ctx, w, args[0], cred, parallel)
			if all {
				return a.printFetchAll(a.fetchAll(ctx, w, adm, args[0], cred, parallel, res, err))
			}
			if err != nil {
				return err
			}
			a.checkCached(ctx, adm, res)
			if _, direct := w.(*admin.Local); direct {
				// Through a holder, its own platform applies.
				a.warnPlatform(res.Reference, res.Platform, res.Index != "")
			}
			if a.json {
				return a.printJSON(res)
			}
			printFetch(a.stdout, res)
			return nil
		},
	}
	cmd.Flags().IntVar(&parallel, "parallel", 4, "layers read at once")
	cmd.Flags().DurationVar(&timeout, "timeout", defaultTimeout, "give up after this long (0: no limit)")
	return cmd
}

// fetch fetches ref and reads every layer through the tiers, printing each
// blob on stdout as it is done (unless --json or --quiet) and the progress
// of the downloads on stderr (see --progress).
func (a *app) fetch(ctx context.Context, w warmer, ref string, cred credential.Credential, parallel int) (*fetchResult, error) {
	prog := a.newProgress(ctx)
	_, direct := w.(*admin.Local)
	var mu sync.Mutex
	line := func(rec fetchRecord) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(a.stdout, "%-9s %s  %-8s %10s", rec.Kind, rec.Digest, rec.Source, humanBytes(rec.Bytes))
		if rec.Kind == "layer" {
			fmt.Fprintf(a.stdout, "  %.2fs", rec.Seconds)
		}
		fmt.Fprintln(a.stdout)
	}
	lines := !a.json && !a.quiet
	// Bars and the lines may share one terminal: the layer lines wait
	// until the bars are gone.
	deferLines := lines && prog.mode == progressBars
	hooks := &admin.WarmHooks{}
	if lines {
		hooks.Documents = func(recs []fetchRecord) {
			for _, r := range recs {
				line(r)
			}
		}
		if !deferLines {
			hooks.Layer = func(_ *fetcher.Layer, rec fetchRecord, err error) {
				if err == nil {
					line(rec)
				}
			}
		}
	}
	if !deferLines { // a spinner would run through the document lines
		if direct {
			prog.stepf("resolving %s", ref)
		} else {
			prog.stepf("resolving %s through the process holding the root", ref)
		}
	}
	// Through the admin socket, the holder reports how far its reads got
	// and the same bars and lines show it.
	hooks.Reader = func(d blob.Digest, size int64, source string, r io.Reader) io.Reader {
		return prog.reader("download", d, size, r)
	}
	res, err := w.Warm(ctx, ref, cred, parallel, hooks)
	prog.close()
	if err == nil && deferLines {
		for _, rec := range res.Blobs {
			if rec.Kind == "layer" {
				line(rec)
			}
		}
	}
	return res, err
}

func printFetch(w io.Writer, res *fetchResult) {
	// The blobs were printed as they were read.
	fmt.Fprintf(w, "fetched %s\n  digest %s (%s), %d blobs, %s in %.2fs\n", res.Reference, res.Digest, res.Platform, len(res.Blobs), humanBytes(res.Bytes), res.Seconds)
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	if o, ok := w.(*outWriter); ok {
		w = o.w
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// humanBytes prints n in binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s takes %d argument(s), got %d; see %s --help", cmd.Name(), n, len(args), cmd.CommandPath())
		}
		return nil
	}
}

// exitNotCached is fetch's exit code when the image was read but not all
// of it could be stored in the disk tier (see checkCached).
const exitNotCached = 8

// checkCached warns on stderr and sets exit code 8 when blobs of res are
// not in the disk tier after the fetch: the tier could not write them (no
// space: it keeps disk.IndexReserve free for its index) or declined them
// (larger than it accepts). The fetch itself succeeded.
func (a *app) checkCached(ctx context.Context, adm admin.Admin, res *fetchResult) {
	held, err := adm.Blobs(ctx, admin.TierDisk)
	if err != nil {
		fmt.Fprintf(a.stderr, "blobctl: warning: cannot tell whether the image is cached: %v\n", err)
		return
	}
	have := make(map[string]bool, len(held))
	for _, b := range held {
		have[b.Digest] = true
	}
	var missing []fetchRecord
	smallest := int64(-1)
	for _, b := range res.Blobs {
		if !have[b.Digest] {
			missing = append(missing, b)
			if smallest < 0 || b.Bytes < smallest {
				smallest = b.Bytes
			}
		}
	}
	if len(missing) == 0 {
		return
	}
	why := "the disk tier declined them (larger than it accepts) or could not write them"
	var st syscall.Statfs_t
	if syscall.Statfs(a.cfg.Root, &st) == nil {
		free := st.Bavail
		if os.Geteuid() == 0 {
			free = st.Bfree
		}
		if int64(free)*st.Bsize < disk.IndexReserve+smallest {
			why = "no space left on device"
		}
	}
	fmt.Fprintf(a.stderr, "blobctl: fetched but not cached: %d of %d blobs are not in the disk tier: %s\n", len(missing), len(res.Blobs), why)
	for _, b := range missing {
		fmt.Fprintf(a.stderr, "  %-8s %s %s\n", b.Kind, b.Digest, humanBytes(b.Bytes))
	}
	a.exit = exitNotCached
}
