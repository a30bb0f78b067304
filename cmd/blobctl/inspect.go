package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/strata-oci/strata"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/admin"
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

func blobRows(recs []admin.BlobRecord) [][]string {
	var rows [][]string
	for _, r := range recs {
		rows = append(rows, []string{r.Tier, r.Digest, humanBytes(r.Size), timeCell(r.LastAccess), orDash(r.MediaType)})
	}
	return rows
}

const blobHeader = "TIER\tDIGEST\tSIZE\tLAST ACCESS\tMEDIA TYPE"

func refRows(recs []admin.RefRecord) [][]string {
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
			adm, err := a.openInspect(cmd.Context())
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
					Blobs []admin.BlobRecord `json:"blobs"`
					Refs  []admin.RefRecord  `json:"refs"`
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
			adm, err := a.openInspect(cmd.Context())
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
			adm, err := a.openInspect(cmd.Context())
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
(layers in the blobs column), "ext4" the ext4 images handed out in ext4-dir
(images in the blobs column, their disk space against ext4-budget),
and "root" every byte on disk under the root (blobs, layers, images, the
index, temporary files), as "du -sb" counts them. A remote tier reports what
it cannot tell.

Like every inspection command (ls, stat, cat, du, refs, verify without
--remove or --overlay, metrics) it never changes what it looks at: it evicts nothing and
applies no budget (the budgets shown are the root owner's, recorded in the
root, unless given on the command line), and a --root that holds no Strata
root is an error (exit 2), never created.`,
		Example: `  blobctl du
  blobctl du --json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			adm, err := a.openInspect(cmd.Context())
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
				switch r.Tier {
				case admin.UsageRoot:
					rows = append(rows, []string{r.Tier, "-", "-", humanBytes(r.Bytes), "-", "-", "all files under the roots"})
					continue
				case admin.UsageExt4:
					rows = append(rows, []string{r.Tier, fmt.Sprint(r.Blobs), "-", humanBytes(r.Bytes), budget, pct, "images in ext4-dir"})
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
	var req admin.EvictRequest
	var olderThan strata.Duration
	var toSize strata.Size
	cmd := &cobra.Command{
		Use:   "evict DIGEST | --image REF | --older-than D | --to-size S",
		Short: "Remove blobs from one tier or all",
		Long: `evict removes blobs, selected by exactly one of:

  DIGEST           that blob, from every tier holding it (or --tier)
  --image REF      the image's tag, membership and access proofs from every tier,
                   its blobs from the local tiers unless another cached image
                   uses them, and the ext4 images derived from it (derived
                   blob, derivation ref, images in ext4-dir); exit code 3
                   when the image is not cached
  --older-than D   blobs last accessed more than D ago (e.g. 36h, 7d)
  --to-size S      least recently used blobs until each local tier (or --tier)
                   holds at most S bytes (e.g. 1GiB; 0 empties it)

A remote REAPI tier cannot delete; its server evicts by its own policy.
It prints what each tier freed ("ext4": images removed from ext4-dir).`,
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
	var req admin.VerifyRequest
	var all bool
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Re-hash every local blob and report corrupt ones",
		Long: `verify reads every blob of the local tiers (or --tier) and checks it against its
digest. It prints each corrupt or missing blob (every blob with --all or
--json) and a summary. With --remove, corrupt entries are dropped so the next
read fetches them again. Exit code 1 when any blob was corrupt or missing,
even if removed.

With --overlay it also re-checks every extracted overlay layer (tier
"overlay") against the manifest written when it was extracted: every file's
content, type, mode, owner and extended attributes, every link target, and
the set of paths. A modified layer (a file changed, added or removed) is
reported corrupt and dropped at once, so the next materialize extracts it
again; a layer a lease holds (a running sandbox, a mounted overlay) is kept
and reported. Layers extracted before manifests were written are reported
"unverifiable" (no exit code 1) and dropped with --remove. As it may drop
layers, --overlay is not an inspection command.`,
		Example: `  blobctl verify
  blobctl verify --remove
  blobctl verify --overlay
  blobctl verify --tier disk --json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			open := a.openInspect
			if req.Remove || req.Overlay {
				open = a.openAdmin
			}
			adm, err := open(cmd.Context())
			if err != nil {
				return err
			}
			defer adm.Close()
			recs, err := adm.Verify(cmd.Context(), req)
			if err != nil {
				return err
			}
			bad, unverifiable, layers := 0, 0, 0
			for _, r := range recs {
				if r.Tier == admin.UsageOverlay {
					layers++
				}
				switch r.Status {
				case admin.StatusOK:
				case admin.StatusUnverifiable:
					unverifiable++
				default:
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
					if r.Status == admin.StatusOK && !all {
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
				for _, r := range recs {
					if r.Tier == admin.UsageOverlay && r.Status != admin.StatusOK && r.Error != "" {
						fmt.Fprintf(a.stdout, "overlay layer %s: %s\n", r.Digest, r.Error)
					}
				}
				if req.Overlay {
					fmt.Fprintf(a.stdout, "verified %d blobs and %d overlay layers: %d ok, %d corrupt or missing, %d unverifiable\n", len(recs)-layers, layers, len(recs)-bad-unverifiable, bad, unverifiable)
				} else {
					fmt.Fprintf(a.stdout, "verified %d blobs: %d ok, %d corrupt or missing\n", len(recs), len(recs)-bad, bad)
				}
			}
			if bad > 0 {
				a.exit = exitCheckFailed
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&req.Remove, "remove", false, "drop corrupt and missing entries (and unverifiable overlay layers)")
	cmd.Flags().BoolVar(&req.Overlay, "overlay", false, "also re-check the extracted overlay layers; modified ones are dropped")
	cmd.Flags().BoolVar(&all, "all", false, "list good blobs too")
	cmd.Flags().StringVar(&req.Tier, "tier", "", "only this tier (memory, disk)")
	return cmd
}

func (a *app) gcCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "gc",
		Short: "Remove expired and orphaned refs, unleased layer directories and unreferenced ext4 images",
		Long: `gc first drops the mount leases whose overlay is no longer mounted (see
"blobctl unmount"), then removes expired refs from the disk tier, tag,
membership and derivation refs whose blob no tier holds any more, extracted
overlay layers that no lease holds (layers of a mounted overlay stay, and when
another process holds the root, so do the layers it uses), and ext4 images in
ext4-dir whose derivation ref is gone, then the least recently used ext4 images
beyond ext4-budget (those handed out in the last 30 seconds stay), and the
temporary files that killed ext4 conversions left in ext4-dir/tmp (of any age
when no other process uses ext4-dir, else those a day old). It applies the
budgets recorded in the root by its owner unless --disk-budget,
--overlay-budget, --ext4-budget or --memory is given.`,
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
			fmt.Fprintf(a.stdout, "stale mounts dropped:  %d\nmounts kept:           %d\nexpired refs removed:  %d\norphan refs removed:   %d\nlayer dirs removed:    %d (%s)\nlayer dirs leased:     %d\next4 images removed:   %d (%s)\next4 temp removed:     %d (%s)\n",
				res.StaleMounts, res.Mounts, res.ExpiredRefs, res.OrphanRefs, res.Layers, humanBytes(res.LayerBytes), res.LayersLeased, res.Ext4Images, humanBytes(res.Ext4Bytes), res.Ext4TempFiles, humanBytes(res.Ext4TempBytes))
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
			adm, err := a.openInspect(cmd.Context())
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
			adm, err := a.openInspect(ctx)
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

// openInspect is openAdmin for the inspection commands: a root blobctl opens
// itself is opened with strata.Config.Inspect (no eviction pass, no budget
// applied, nothing created), and one that is not there is a usage error.
// Through the admin socket nothing changes: the holder's budgets apply.
func (a *app) openInspect(ctx context.Context) (admin.Admin, error) {
	saved := a.cfg
	a.cfg.Inspect = true
	defer func() { a.cfg = saved }()
	adm, err := a.openAdmin(ctx)
	if errors.Is(err, admin.ErrNoRoot) {
		return nil, usagef("%s; check --root", strings.TrimPrefix(err.Error(), "strata: "))
	}
	return adm, err
}

// storedBudgets sets in cfg the budgets that the root's owner recorded
// (admin.StoredBudgets), except those the command line or the config file
// set: blobctl run on an executor's root applies the executor's budgets, not
// its own defaults.
func (a *app) storedBudgets(cmd *cobra.Command, cfg *strata.Config) error {
	b, ok, err := admin.StoredBudgets(cfg.Root)
	if err != nil {
		// Not worth failing every command (version, help) for.
		fmt.Fprintf(a.stderr, "blobctl: warning: %v; using the configured budgets\n", err)
		return nil
	}
	if !ok {
		return nil
	}
	inFile, err := configFileKeys(a.configPath)
	if err != nil {
		return err
	}
	explicit := func(key string) bool { return cmd.Flags().Changed(key) || inFile[key] }
	if !explicit("memory") {
		cfg.MemoryBudget = b.Memory
	}
	if !explicit("disk-budget") {
		cfg.DiskBudget = b.Disk
	}
	if !explicit("overlay-budget") {
		cfg.OverlayBudget = b.Overlay
	}
	if !explicit("ext4-budget") {
		cfg.Ext4Budget = b.Ext4
	}
	return nil
}

// configFileKeys returns the top-level keys of the config file at path
// (none without one), lower-cased.
func configFileKeys(path string) (map[string]bool, error) {
	keys := map[string]bool{}
	if path == "" {
		return keys, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, usageError{fmt.Errorf("config: %w", err)}
	}
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, usageError{fmt.Errorf("config %s: %w", path, err)}
	}
	for k := range m {
		keys[strings.ToLower(k)] = true
	}
	return keys, nil
}
