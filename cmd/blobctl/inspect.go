package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/materialize/host"
)

func (a *app) table(header string, rows [][]string) {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

func timeCell(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func blobRows(recs []host.BlobRecord) [][]string {
	var rows [][]string
	for _, r := range recs {
		rows = append(rows, []string{r.Tier, r.Digest, humanBytes(r.Size), timeCell(r.LastAccess), orDash(r.MediaType)})
	}
	return rows
}

const blobHeader = "TIER\tDIGEST\tSIZE\tLAST ACCESS\tMEDIA TYPE"

func refRows(recs []host.RefRecord) [][]string {
	var rows [][]string
	for _, r := range recs {
		rows = append(rows, []string{r.Tier, r.Namespace, orDash(r.Scope), r.Name, r.Digest, orDash(r.MediaType), timeCell(r.Expires)})
	}
	return rows
}

const refHeader = "TIER\tNAMESPACE\tSCOPE\tNAME\tDIGEST\tMEDIA TYPE\tEXPIRES"

func (a *app) lsCommand() *cobra.Command {
	var tier string
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the blobs and refs of each tier",
		Long: `ls lists every blob of the tiers that can list (memory and disk; a remote
REAPI tier cannot be listed): tier, digest, size, last access and, where a
cached manifest or ref names it, the media type. Then it lists the refs (tags,
memberships, access proofs, derivations) as "blobctl refs" does.`,
		Example: `  blobctl ls
  blobctl ls --tier disk --json
  blobctl ls --root /var/cache/strata   # also while an executor holds the root`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			adm, err := a.openAdmin(cmd.Context())
			if err != nil {
				return err
			}
			defer adm.Close()
			blobs, err := adm.Blobs(cmd.Context(), tier)
			if err != nil {
				return err
			}
			refs, err := adm.Refs(cmd.Context(), tier, "")
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(struct {
					Blobs []host.BlobRecord `json:"blobs"`
					Refs  []host.RefRecord  `json:"refs"`
				}{nonNil(blobs), nonNil(refs)})
			}
			a.table(blobHeader, blobRows(blobs))
			if len(refs) > 0 {
				fmt.Fprintln(a.stdout)
				a.table(refHeader, refRows(refs))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&tier, "tier", "", "only this tier (memory, disk, remote)")
	return cmd
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func parseDigestArg(s string) (blob.Digest, error) {
	d, err := blob.ParseDigest(s)
	if err != nil {
		return "", usageError{err}
	}
	return d, nil
}

func (a *app) statCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "stat DIGEST",
		Short: "Show which tiers hold a blob",
		Long:  "stat prints, for each tier holding the blob, its size, last access and media type. Exit code 3 when no tier holds it.",
		Example: `  blobctl stat sha256:4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1
  blobctl stat sha256:4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1 --json`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := parseDigestArg(args[0])
			if err != nil {
				return err
			}
			adm, err := a.openAdmin(cmd.Context())
			if err != nil {
				return err
			}
			defer adm.Close()
			recs, err := adm.Stat(cmd.Context(), d)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(recs)
			}
			a.table(blobHeader, blobRows(recs))
			return nil
		},
	}
}

func (a *app) catCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "cat DIGEST",
		Short: "Write a blob's bytes to stdout, verified",
		Long: `cat streams the blob from the highest tier holding it to stdout, hashing as it
goes. If the content does not match DIGEST it fails with exit code 1 after the
bytes read so far (so pipe into a file and check the exit code).`,
		Example: `  blobctl cat sha256:4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1 > manifest.json
  blobctl cat sha256:4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1 | tar -tz`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := parseDigestArg(args[0])
			if err != nil {
				return err
			}
			adm, err := a.openAdmin(cmd.Context())
			if err != nil {
				return err
			}
			defer adm.Close()
			_, err = adm.Cat(cmd.Context(), d, a.stdout)
			return err
		},
	}
}

func (a *app) duCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "du",
		Short: "Show each tier's usage against its budget",
		Long: `du prints, per tier, the number of blobs and refs and the bytes held against
the tier's budget; "overlay" is the overlay materializer's extracted layers
(LAYERS in the blobs column). A remote tier reports what it cannot tell.`,
		Example: `  blobctl du
  blobctl du --json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			adm, err := a.openAdmin(cmd.Context())
			if err != nil {
				return err
			}
			defer adm.Close()
			recs, err := adm.Usage(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(recs)
			}
			var rows [][]string
			for _, r := range recs {
				budget, pct := "unbounded", "-"
				if r.Budget > 0 {
					budget = humanBytes(r.Budget)
					pct = fmt.Sprintf("%.1f%%", 100*float64(r.Bytes)/float64(r.Budget))
				}
				if r.Error != "" {
					rows = append(rows, []string{r.Tier, "-", "-", "-", "-", "-", r.Error})
					continue
				}
				rows = append(rows, []string{r.Tier, fmt.Sprint(r.Blobs), fmt.Sprint(r.Refs), humanBytes(r.Bytes), budget, pct, ""})
			}
			a.table("TIER\tBLOBS\tREFS\tBYTES\tBUDGET\tUSED\tNOTE", rows)
			return nil
		},
	}
}

func (a *app) evictCommand() *cobra.Command {
	var req host.EvictRequest
	var olderThan host.Duration
	var toSize host.Size
	cmd := &cobra.Command{
		Use:   "evict DIGEST | --image REF | --older-than D | --to-size S",
		Short: "Remove blobs from one tier or all",
		Long: `evict removes blobs, selected by exactly one of:

  DIGEST           that blob, from every tier holding it (or --tier)
  --image REF      the image's tag, membership and access proofs from every tier,
                   and its blobs from the local tiers unless another cached
                   image uses them
  --older-than D   blobs last accessed more than D ago (e.g. 36h, 7d)
  --to-size S      least recently used blobs until each local tier (or --tier)
                   holds at most S bytes (e.g. 1GiB; 0 empties it)

A remote REAPI tier cannot delete; its server evicts by its own policy.
It prints what each tier freed.`,
		Example: `  blobctl evict sha256:4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1
  blobctl evict --image docker.io/library/alpine:3.20
  blobctl evict --older-than 7d --tier disk
  blobctl evict --to-size 2GiB --json`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usagef("evict takes at most one DIGEST")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				if _, err := parseDigestArg(args[0]); err != nil {
					return err
				}
				req.Digest = args[0]
			}
			req.OlderThan = olderThan
			req.ToSize = toSize
			req.ToSizeSet = cmd.Flags().Changed("to-size")
			n := 0
			for _, set := range []bool{req.Digest != "", req.Image != "", cmd.Flags().Changed("older-than"), req.ToSizeSet} {
				if set {
					n++
				}
			}
			if n != 1 {
				return usagef("evict needs exactly one of DIGEST, --image, --older-than, --to-size")
			}
			if cmd.Flags().Changed("older-than") && olderThan == 0 {
				return usagef("--older-than must be more than 0")
			}
			adm, err := a.openAdmin(cmd.Context())
			if err != nil {
				return err
			}
			defer adm.Close()
			recs, err := adm.Evict(cmd.Context(), req)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(nonNil(recs))
			}
			var rows [][]string
			for _, r := range recs {
				rows = append(rows, []string{r.Tier, fmt.Sprint(r.Blobs), humanBytes(r.Bytes)})
			}
			a.table("TIER\tEVICTED\tFREED", rows)
			return nil
		},
	}
	cmd.Flags().StringVar(&req.Image, "image", "", "forget this image `REF`")
	cmd.Flags().Var(&olderThan, "older-than", "evict blobs last accessed more than `D` ago")
	cmd.Flags().Var(&toSize, "to-size", "evict until each tier holds at most `S` bytes")
	cmd.Flags().StringVar(&req.Tier, "tier", "", "only this tier (memory, disk)")
	return cmd
}

func (a *app) verifyCommand() *cobra.Command {
	var req host.VerifyRequest
	var all bool
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Re-hash every local blob and report corrupt ones",
		Long: `verify reads every blob of the local tiers (or --tier) and checks it against its
digest. It prints each corrupt or missing blob (every blob with --all or
--json) and a summary. With --remove, corrupt entries are dropped so the next
read fetches them again. Exit code 1 when any blob was corrupt or missing,
even if removed.`,
		Example: `  blobctl verify
  blobctl verify --remove
  blobctl verify --tier disk --json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			adm, err := a.openAdmin(cmd.Context())
			if err != nil {
				return err
			}
			defer adm.Close()
			recs, err := adm.Verify(cmd.Context(), req)
			if err != nil {
				return err
			}
			bad := 0
			for _, r := range recs {
				if r.Status != host.StatusOK {
					bad++
				}
			}
			if a.json {
				if err := a.printJSON(nonNil(recs)); err != nil {
					return err
				}
			} else {
				var rows [][]string
				for _, r := range recs {
					if r.Status == host.StatusOK && !all {
						continue
					}
					removed := ""
					if r.Removed {
						removed = "removed"
					}
					rows = append(rows, []string{r.Tier, r.Digest, humanBytes(r.Size), r.Status, removed})
				}
				if len(rows) > 0 {
					a.table("TIER\tDIGEST\tSIZE\tSTATUS\tACTION", rows)
				}
				fmt.Fprintf(a.stdout, "verified %d blobs: %d ok, %d corrupt or missing\n", len(recs), len(recs)-bad, bad)
			}
			if bad > 0 {
				a.exit = exitCheckFailed
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&req.Remove, "remove", false, "drop corrupt and missing entries")
	cmd.Flags().BoolVar(&all, "all", false, "list good blobs too")
	cmd.Flags().StringVar(&req.Tier, "tier", "", "only this tier (memory, disk)")
	return cmd
}

func (a *app) gcCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "gc",
		Short: "Remove expired and orphaned refs, unleased layer directories and unreferenced ext4 images",
		Long: `gc removes expired refs from the disk tier, tag, membership and derivation
refs whose blob no tier holds any more, extracted overlay layers that no
lease holds (when another process holds the root, its leased layers stay),
and ext4 images in ext4-dir whose derivation ref is gone.`,
		Example: `  blobctl gc
  blobctl gc --json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			adm, err := a.openAdmin(cmd.Context())
			if err != nil {
				return err
			}
			defer adm.Close()
			res, err := adm.GC(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(res)
			}
			fmt.Fprintf(a.stdout, "expired refs removed:  %d\norphan refs removed:   %d\nlayer dirs removed:    %d (%s)\nlayer dirs leased:     %d\next4 images removed:   %d (%s)\n",
				res.ExpiredRefs, res.OrphanRefs, res.Layers, humanBytes(res.LayerBytes), res.LayersLeased, res.Ext4Images, humanBytes(res.Ext4Bytes))
			return nil
		},
	}
}

func (a *app) refsCommand() *cobra.Command {
	var tier, ns string
	cmd := &cobra.Command{
		Use:   "refs",
		Short: "List refs: tags, memberships, access proofs, derivations",
		Long: `refs lists the unexpired refs of the tiers that can list them. Namespaces:
tag (image reference -> manifest or index), member (repository@digest ->
manifest), proof (access proof; scope is the credential's identity, a keyed
hash, never the credential), derived (image + format + options -> derived blob).`,
		Example: `  blobctl refs
  blobctl refs --namespace tag
  blobctl refs --namespace derived --json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			adm, err := a.openAdmin(cmd.Context())
			if err != nil {
				return err
			}
			defer adm.Close()
			recs, err := adm.Refs(cmd.Context(), tier, ns)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(nonNil(recs))
			}
			a.table(refHeader, refRows(recs))
			return nil
		},
	}
	cmd.Flags().StringVar(&tier, "tier", "", "only this tier")
	cmd.Flags().StringVar(&ns, "namespace", "", "only this namespace (tag, member, proof, derived)")
	return cmd
}

func (a *app) metricsCommand() *cobra.Command {
	var addr string
	cmd := &cobra.Command{
		Use:   "metrics",
		Short: "Print the Prometheus metrics of the process holding the root",
		Long: `metrics prints the Prometheus text exposition of the process that holds the
root, through its admin socket (when nothing holds it, blobctl's own, mostly
zero). With --serve ADDR it serves them at http://ADDR/metrics for scraping
until interrupted, asking the holder afresh on every scrape.`,
		Example: `  blobctl metrics | grep strata_tier_requests_total
  blobctl metrics --serve 127.0.0.1:9464`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			adm, err := a.openAdmin(ctx)
			if err != nil {
				return err
			}
			defer adm.Close()
			if addr == "" {
				return adm.Metrics(ctx, a.stdout)
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return usageError{fmt.Errorf("--serve: %w", err)}
			}
			mux := http.NewServeMux()
			mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
				if err := adm.Metrics(r.Context(), w); err != nil {
					http.Error(w, err.Error(), http.StatusBadGateway)
				}
			})
			srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
			fmt.Fprintf(a.stderr, "serving metrics on http://%s/metrics\n", ln.Addr())
			go func() {
				<-ctx.Done()
				_ = srv.Close()
			}()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "serve", "", "serve the metrics on `ADDR` (host:port)")
	return cmd
}

var _ io.Writer
