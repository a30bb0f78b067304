package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/spf13/cobra"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/materialize/host"
	"github.com/strata-oci/strata/registry/credential"
)

// fetchResult and fetchRecord are what fetch prints.
type (
	fetchResult = host.FetchResult
	fetchRecord = host.FetchRecord
)

// warmer is what fetch needs: *host.Host, or the *host.Client of the
// process holding the root.
type warmer interface {
	Warm(ctx context.Context, ref string, cred credential.Credential, parallel int, hooks *host.WarmHooks) (*host.FetchResult, error)
	Close() error
}

func (a *app) fetchCommand() *cobra.Command {
	var parallel int
	cmd := &cobra.Command{
		Use:   "fetch IMAGE",
		Short: "Fetch an image into the tiers and read every layer through",
		Long: `Fetch resolves IMAGE, proves access at the registry (or reuses a valid proof),
reads the manifest and config, and reads every layer to the end, so that all of
the image is in the local tiers afterwards (the cache is warm).

For each blob it prints its digest, the tier that served it ("registry" when it
came from the registry), its size and, for layers, the read time. On a terminal
it shows a progress bar per layer.

Credentials: --username with --password-stdin, else the config's per-registry
credentials, else the Docker keychain when "keychain: true", else anonymous.

When another process holds the root, fetch asks it to fetch over its admin
socket, with that process's configuration (platform, network policy,
configured credentials); --username/--password-stdin travel over the
owner-only socket and are never printed.`,
		Example: `  blobctl fetch docker.io/library/alpine:3.20
  blobctl --allow-cidr 127.0.0.0/8 fetch 127.0.0.1:5055/strata/sample:latest --json
  echo "$TOKEN" | blobctl fetch ghcr.io/acme/app:v1 --username acme --password-stdin
  blobctl --platform linux/arm64 fetch docker.io/library/alpine:3.20`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cred, err := a.credential()
			if err != nil {
				return err
			}
			adm, err := a.openAdmin(ctx)
			if err != nil {
				return err
			}
			w := adm.(warmer) // *host.Host or *host.Client
			defer w.Close()
			res, err := a.fetch(ctx, w, args[0], cred, parallel)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(res)
			}
			printFetch(a.stdout, res)
			return nil
		},
	}
	cmd.Flags().IntVar(&parallel, "parallel", 4, "layers read at once")
	return cmd
}

// fetch fetches ref and reads every layer through the tiers, printing each
// blob as it is done (or progress bars on a terminal).
func (a *app) fetch(ctx context.Context, w warmer, ref string, cred credential.Credential, parallel int) (*fetchResult, error) {
	var progress *mpb.Progress
	if _, direct := w.(*host.Host); direct && isTerminal(a.stdout) && !a.json {
		progress = mpb.NewWithContext(ctx, mpb.WithOutput(a.stdout), mpb.WithWidth(40))
	}
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
	hooks := &host.WarmHooks{}
	if !a.json {
		hooks.Documents = func(recs []fetchRecord) {
			for _, r := range recs {
				line(r)
			}
		}
		if progress == nil {
			hooks.Layer = func(_ *fetcher.Layer, rec fetchRecord, err error) {
				if err == nil {
					line(rec)
				}
			}
		}
	}
	if progress != nil {
		hooks.Reader = func(l *fetcher.Layer, source string, r io.Reader) io.Reader {
			bar := progress.AddBar(l.Size(),
				mpb.PrependDecorators(decor.Name(l.Digest().Encoded()[:12]+" "), decor.Name(source+" ", decor.WCSyncSpaceR)),
				mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f"), decor.Name(" "), decor.AverageSpeed(decor.SizeB1024(0), "% .1f")),
				mpb.BarRemoveOnComplete())
			pr, err := bar.ProxyReader(r)
			if err != nil {
				return r
			}
			return pr
		}
		hooks.Layer = func(_ *fetcher.Layer, rec fetchRecord, err error) {}
	}
	res, err := w.Warm(ctx, ref, cred, parallel, hooks)
	if progress != nil {
		progress.Shutdown()
		if err == nil {
			for _, rec := range res.Blobs {
				if rec.Kind == "layer" {
					line(rec)
				}
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
