package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/sync/errgroup"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/materialize/host"
	"github.com/strata-oci/strata/registry/credential"
)

// fetchRecord is one blob of a fetched image.
type fetchRecord struct {
	Kind      string  `json:"kind"` // index, manifest, config or layer
	Digest    string  `json:"digest"`
	MediaType string  `json:"media_type,omitempty"`
	Source    string  `json:"source"` // the tier that served it, or "registry"
	Bytes     int64   `json:"bytes"`
	Seconds   float64 `json:"seconds,omitempty"`
}

// fetchResult is what fetch prints.
type fetchResult struct {
	Reference string        `json:"reference"`
	Digest    string        `json:"digest"`
	Index     string        `json:"index,omitempty"`
	Platform  string        `json:"platform"`
	FromCache bool          `json:"from_cache"`
	Blobs     []fetchRecord `json:"blobs"`
	Bytes     int64         `json:"bytes"`
	Seconds   float64       `json:"seconds"`
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
credentials, else the Docker keychain when "keychain: true", else anonymous.`,
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
			h, _, err := a.openHost(ctx)
			if err != nil {
				return err
			}
			defer h.Close()
			res, err := a.fetch(ctx, h, args[0], cred, parallel)
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

// fetch fetches ref and reads every layer through the tiers.
func (a *app) fetch(ctx context.Context, h *host.Host, ref string, cred credential.Credential, parallel int) (*fetchResult, error) {
	start := time.Now()
	img, err := h.Fetcher().FetchImage(ctx, ref, cred)
	if err != nil {
		return nil, err
	}
	res := &fetchResult{Reference: img.Reference.String(), Digest: img.Digest.String(), Platform: h.Platform().String(), FromCache: img.FromCache}
	if img.Index != "" {
		res.Index = img.Index.String()
		size := int64(0)
		if info, err := h.Stack().Stat(ctx, img.Index); err == nil {
			size = info.Size
		}
		res.Blobs = append(res.Blobs, fetchRecord{Kind: "index", Digest: img.Index.String(), Source: img.Sources[img.Index], Bytes: size})
	}
	res.Blobs = append(res.Blobs,
		fetchRecord{Kind: "manifest", Digest: img.Digest.String(), MediaType: string(img.Manifest.MediaType), Source: img.Sources[img.Digest], Bytes: img.Manifest.Size()},
		fetchRecord{Kind: "config", Digest: img.Manifest.Config.Digest.String(), MediaType: string(img.Manifest.Config.MediaType), Source: img.Sources[img.Manifest.Config.Digest], Bytes: img.Manifest.Config.Size})

	if !a.json {
		for _, b := range res.Blobs {
			fmt.Fprintf(a.stdout, "%-9s %s  %-8s %10s\n", b.Kind, b.Digest, b.Source, humanBytes(b.Bytes))
		}
	}
	layers := img.Layers()
	recs := make([]fetchRecord, len(layers))
	var progress *mpb.Progress
	if isTerminal(a.stdout) && !a.json {
		progress = mpb.NewWithContext(ctx, mpb.WithOutput(a.stdout), mpb.WithWidth(40))
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(parallel, 1))
	for i, l := range layers {
		g.Go(func() error {
			rec, err := readLayer(gctx, l, progress)
			if err != nil {
				return err
			}
			recs[i] = rec
			if progress == nil && !a.json {
				mu.Lock()
				fmt.Fprintf(a.stdout, "%-9s %s  %-8s %10s  %.2fs\n", rec.Kind, rec.Digest, rec.Source, humanBytes(rec.Bytes), rec.Seconds)
				mu.Unlock()
			}
			return nil
		})
	}
	err = g.Wait()
	if progress != nil {
		progress.Wait()
	}
	if err != nil {
		return nil, err
	}
	if progress != nil {
		for _, rec := range recs {
			fmt.Fprintf(a.stdout, "%-9s %s  %-8s %10s  %.2fs\n", rec.Kind, rec.Digest, rec.Source, humanBytes(rec.Bytes), rec.Seconds)
		}
	}
	res.Blobs = append(res.Blobs, recs...)
	for _, b := range res.Blobs {
		res.Bytes += b.Bytes
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// readLayer reads one layer to the end (verified), reporting its source.
func readLayer(ctx context.Context, l *fetcher.Layer, progress *mpb.Progress) (fetchRecord, error) {
	start := time.Now()
	rc, info, err := l.OpenInfo(ctx)
	if err != nil {
		return fetchRecord{}, fmt.Errorf("layer %s: %w", l.Digest(), err)
	}
	defer rc.Close()
	var r io.Reader = rc
	var bar *mpb.Bar
	if progress != nil {
		short := l.Digest().Encoded()[:12]
		bar = progress.AddBar(l.Size(),
			mpb.PrependDecorators(decor.Name(short+" "), decor.Name(info.Tier+" ", decor.WCSyncSpaceR)),
			mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f"), decor.Name(" "), decor.AverageSpeed(decor.SizeB1024(0), "% .1f")))
		if pr, err := bar.ProxyReader(rc); err == nil {
			r = pr
		}
	}
	n, err := blob.Copy(io.Discard, r, l.Digest(), l.Size())
	if bar != nil {
		if err != nil {
			bar.Abort(false)
		} else {
			bar.SetTotal(n, true)
		}
	}
	if err != nil {
		return fetchRecord{}, fmt.Errorf("layer %s from %s: %w", l.Digest(), info.Tier, err)
	}
	return fetchRecord{Kind: "layer", Digest: l.Digest().String(), MediaType: l.MediaType(), Source: info.Tier, Bytes: n, Seconds: time.Since(start).Seconds()}, nil
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
