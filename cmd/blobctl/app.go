package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/strata-oci/strata"
	"github.com/strata-oci/strata/internal/admin"
	"github.com/strata-oci/strata/registry/credential"
)

// app holds one invocation's state: its streams, the configuration its
// flags and config file describe, and the exit code a command chose.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	flagCfg    strata.Config // what the flags set (only changed ones are used)
	cfg        strata.Config // defaults, then the config file, then changed flags
	configPath string
	username   string
	passStdin  bool
	json       bool
	verbose    bool
	quiet      bool
	progress   string // --progress: auto, plain or none
	exit       int

	// image is the IMAGE argument of fetch or materialize, which error
	// messages name.
	image string

	// REAPI headers whose values come from the environment or stdin, never
	// from argv; headerArgv records a refused --remote-header.
	headerEnv   []string
	headerStdin string
	headerArgv  bool
}

func newApp(stdin io.Reader, stdout, stderr io.Writer) *app {
	return &app{stdin: stdin, stdout: stdout, stderr: stderr, flagCfg: strata.Default()}
}

const rootLong = `blobctl inspects, warms and evicts the Strata tiers of a host.

Strata keeps every image byte in a content-addressed store of tiers: memory over
a disk root (default $XDG_CACHE_HOME/strata or ~/.cache/strata), over an optional
shared Remote Execution API cache. blobctl fetches and materializes images
through those tiers and lets an operator list, verify and evict what they hold.

Configuration comes from one YAML file (--config) whose keys are the flag names
below; flags given on the command line override the file. With neither, the
built-in defaults apply (see docs/configuration.md).

When another process (an executor) holds the disk root, fetch and the
inspection commands (ls, stat, cat, du, evict, verify, gc, refs, metrics) talk
to it over its admin socket (ROOT/admin.sock) and print the same output;
materialize needs the root itself.

` + exitCodesHelp

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "blobctl",
		Short: "Inspect, warm and evict Strata's blob tiers",
		Long:  rootLong,
		Example: `  # Fetch an image into the default tiers and build its ext4 disk image
  blobctl fetch docker.io/library/alpine:3.20
  blobctl materialize docker.io/library/alpine:3.20 --format ext4 --out alpine.ext4

  # A registry on loopback must be allowed explicitly
  blobctl --allow-cidr 127.0.0.0/8 fetch 127.0.0.1:5055/strata/sample:latest

  # What the tiers hold, as JSON
  blobctl ls --json`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return a.loadConfig(cmd)
		},
		// blobctl alone prints the help; a word that is no command is a
		// usage error (cobra's own check would make it a plain failure).
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			hint := "see blobctl --help for the commands"
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				hint = "did you mean " + strings.Join(s, " or ") + "?"
			}
			return usagef("unknown command %q: %s", args[0], hint)
		},
	}
	root.SuggestionsMinimumDistance = 2
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&a.configPath, "config", "", "YAML config `FILE` (keys are the flag names)")
	bindConfigFlags(pf, &a.flagCfg)
	pf.StringVar(&a.username, "username", "", "registry user name (the password comes from --password-stdin)")
	pf.BoolVar(&a.passStdin, "password-stdin", false, "read the registry password from the first line of stdin")
	pf.StringArrayVar(&a.headerEnv, "remote-header-env", nil, "send the REAPI server header KEY with the value of environment variable ENVVAR, given as `KEY=ENVVAR` (repeatable; e.g. an API key)")
	pf.StringVar(&a.headerStdin, "remote-header-stdin", "", "send header `KEY` to the REAPI server with the value read from the first line of stdin")
	pf.Var(refusedFlag{&a.headerArgv}, "remote-header", "refused: header values never come from argv (use --remote-header-env, --remote-header-stdin or the config file)")
	_ = pf.MarkHidden("remote-header")
	pf.BoolVar(&a.json, "json", false, "print records as JSON")
	pf.BoolVar(&a.verbose, "verbose", false, "on failure, print the detailed error chain after the one-line explanation")
	pf.StringVar(&a.progress, "progress", "auto", "progress of long steps on stderr: auto (bars on a terminal, else nothing), plain (one line per step, for logs) or none")
	pf.BoolVar(&a.quiet, "quiet", false, "print no progress and no per-blob lines: only results, warnings and errors")
	root.AddCommand(a.fetchCommand(), a.materializeCommand(), a.lsCommand(), a.statCommand(), a.catCommand(),
		a.duCommand(), a.evictCommand(), a.verifyCommand(), a.gcCommand(), a.refsCommand(), a.metricsCommand(), a.versionCommand(), a.unmountCommand())
	return root
}

// bindConfigFlags defines one flag per config key, named like the key.
// Credentials and the identity key are file-only (secrets do not belong in
// argv).
func bindConfigFlags(fs *pflag.FlagSet, c *strata.Config) {
	fs.StringVar(&c.Root, "root", c.Root, "disk tier root `DIR`")
	fs.Var(&c.MemoryBudget, "memory", "memory tier `SIZE` (e.g. 256MiB; 0 disables it)")
	fs.Var(&c.MemoryMaxBlob, "memory-max-blob", "largest blob the memory tier keeps (default 4MiB)")
	fs.Var(&c.DiskBudget, "disk-budget", "disk tier budget `SIZE` (0: unbounded)")
	fs.StringVar(&c.RemoteEndpoint, "remote", c.RemoteEndpoint, "shared REAPI tier `grpc://HOST:PORT` or grpcs://HOST[:PORT]")
	fs.StringVar(&c.RemoteInstance, "remote-instance", c.RemoteInstance, "REAPI instance `NAME`")
	fs.StringVar(&c.RemoteTLSCA, "remote-tls-ca", c.RemoteTLSCA, "PEM `FILE` of CAs for a grpcs:// remote")
	fs.StringVar(&c.RemoteTLSCert, "remote-tls-cert", c.RemoteTLSCert, "PEM client certificate `FILE` (mTLS)")
	fs.StringVar(&c.RemoteTLSKey, "remote-tls-key", c.RemoteTLSKey, "PEM client key `FILE` (mTLS)")
	fs.StringVar(&c.RemoteTLSServerName, "remote-tls-server-name", c.RemoteTLSServerName, "server `NAME` to verify in the remote's certificate")
	fs.IntVar(&c.RemoteReadStreams, "remote-read-streams", c.RemoteReadStreams, "ranged reads at once per large remote blob (`N`; 0 or 1: one stream; raise for a distant cluster)")
	fs.Var(&c.RemoteStallTimeout, "remote-stall-timeout", "fail over from a remote read or write that makes no progress for `DURATION` (default 5s)")
	fs.BoolVar(&c.RemoteAnonymousShared, "remote-anonymous-shared", c.RemoteAnonymousShared, "let anonymous pulls read and write the shared remote tier")
	fs.BoolVar(&c.RemoteNoLeases, "remote-no-leases", c.RemoteNoLeases, "do not collapse registry pulls across executors through leases in the shared remote tier")
	fs.Var(mirrorFlag{&c.Mirrors}, "mirror", "`REGISTRY=MIRROR` tried before REGISTRY (repeatable, in order)")
	fs.StringArrayVar(&c.AllowCIDRs, "allow-cidr", c.AllowCIDRs, "open the network policy to `CIDR` (repeatable; e.g. 127.0.0.0/8 for a local registry)")
	fs.BoolVar(&c.Keychain, "keychain", c.Keychain, "use the Docker/Podman keychain (~/.docker/config.json, credential helpers)")
	fs.Var(&c.RegistryMaxBlob, "max-blob-size", "largest blob `SIZE` read from a registry (default 64GiB)")
	fs.IntVar(&c.RegistryReadStreams, "registry-read-streams", c.RegistryReadStreams, "Range requests at once per large registry blob (`N`; 0 or 1: one GET; raise for a distant registry)")
	fs.Var(&c.TagTTL, "tag-ttl", "how long a resolved tag is trusted without asking the registry")
	fs.Var(&c.ProofTTL, "proof-ttl", "how long an access proof admits a caller without asking the registry")
	fs.StringVar(&c.Platform, "platform", c.Platform, "`os/arch[/variant]` to select from multi-platform images (default: this machine; fetch also takes all)")
	fs.StringVar(&c.OverlayRoot, "overlay-root", c.OverlayRoot, "`DIR` of extracted overlay layers (default ROOT/overlay)")
	fs.Var(&c.OverlayBudget, "overlay-budget", "budget `SIZE` of unleased extracted layers (0: unbounded)")
	fs.BoolVar(&c.OverlayUserXattr, "overlay-userxattr", c.OverlayUserXattr, "mark opaque dirs with user.overlay.opaque (mount with userxattr)")
	fs.StringVar(&c.Ext4Dir, "ext4-dir", c.Ext4Dir, "`DIR` of ext4 images handed out (default ROOT/ext4)")
	fs.Var(&c.Ext4Free, "ext4-free", "free space `SIZE` every ext4 image gets")
	fs.Int64Var(&c.Ext4FreeInodes, "ext4-free-inodes", c.Ext4FreeInodes, "free inodes every ext4 image gets")
	fs.Var(&c.Ext4Budget, "ext4-budget", "budget `SIZE` of the ext4 images kept in ext4-dir (LRU; 0: unbounded)")
	fs.BoolVar(&c.NoAdmin, "no-admin", c.NoAdmin, "do not serve the admin socket while this blobctl holds the root")
}

// loadConfig builds a.cfg: defaults, then the config file, then every flag
// the command line set.
func (a *app) loadConfig(cmd *cobra.Command) error {
	cfg := strata.Default()
	if a.configPath != "" {
		var err error
		if cfg, err = strata.Load(a.configPath, cfg); err != nil {
			return usageError{err}
		}
	}
	apply := pflag.NewFlagSet("apply", pflag.ContinueOnError)
	bindConfigFlags(apply, &cfg)
	var errs []error
	cmd.Flags().Visit(func(f *pflag.Flag) {
		dst := apply.Lookup(f.Name)
		if dst == nil {
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			errs = append(errs, dst.Value.(pflag.SliceValue).Replace(sv.GetSlice()))
			return
		}
		errs = append(errs, dst.Value.Set(f.Value.String()))
	})
	if err := errors.Join(errs...); err != nil {
		return usageError{err}
	}
	if err := a.remoteHeaders(&cfg); err != nil {
		return err
	}
	if err := a.storedBudgets(cmd, &cfg); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	if a.passStdin && a.username == "" {
		return usagef("--password-stdin needs --username")
	}
	switch a.progress {
	case "auto", "plain", "none":
	default:
		return usagef("--progress %q: want auto, plain or none", a.progress)
	}
	a.cfg = cfg
	return nil
}

// credential returns the request credential the flags describe.
func (a *app) credential() (credential.Credential, error) {
	if a.username == "" {
		return credential.Anonymous, nil
	}
	if !a.passStdin {
		return credential.Credential{}, usagef("--username needs --password-stdin (passwords are never taken from argv)")
	}
	line, err := bufio.NewReader(a.stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return credential.Credential{}, fmt.Errorf("read password from stdin: %w", err)
	}
	pass := strings.TrimRight(line, "\r\n")
	if pass == "" {
		return credential.Credential{}, usagef("--password-stdin: stdin held no password")
	}
	return credential.Basic("", a.username, pass), nil
}

// openHost opens the root directly; commands that need the root itself
// (fetch, materialize) use it.
func (a *app) openHost(ctx context.Context) (*strata.Host, *prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg := a.cfg
	cfg.Metrics, cfg.Logger = reg, a.logger()
	h, err := strata.Open(ctx, cfg)
	if errors.Is(err, strata.ErrLocked) {
		return nil, nil, fmt.Errorf("%w: %w (this command needs the root itself: stop that process or use another --root)", errLockedNoAdmin, err)
	}
	return h, reg, err
}

// openAdmin opens the root directly (an *admin.Local whose Close closes the
// host) or, when another process holds it, connects to that process's admin
// socket (an *admin.Client).
func (a *app) openAdmin(ctx context.Context) (admin.Admin, error) {
	h, _, err := a.openHost(ctx)
	if err == nil {
		return h.Admin(), nil
	}
	if !errors.Is(err, errLockedNoAdmin) {
		return nil, err
	}
	c, derr := admin.Dial(ctx, a.cfg.Root)
	if derr != nil {
		if errors.Is(derr, admin.ErrNoAdmin) {
			return nil, fmt.Errorf("%w: %s is held by another process and nobody answers on its admin socket (%v)", errLockedNoAdmin, a.cfg.Root, derr)
		}
		return nil, derr
	}
	return c, nil
}

// logger is what the components of a host blobctl opens report to: stderr,
// at Info (Warn with --quiet). They report what an operator would want to
// know (a bad copy skipped and repaired, an index rebuilt, leftovers
// removed), never credentials or header values.
func (a *app) logger() *slog.Logger {
	level := slog.LevelInfo
	if a.quiet {
		level = slog.LevelWarn
	}
	return slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: level}))
}

// printJSON writes v as indented JSON.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// refusedFlag is a flag whose every use is refused later with a clear
// message (see remoteHeaders). Set keeps nothing of its argument and never
// fails: pflag would quote the argument, a secret, in its error.
type refusedFlag struct{ used *bool }

func (f refusedFlag) String() string { return "" }
func (f refusedFlag) Type() string   { return "refused" }
func (f refusedFlag) Set(string) error {
	*f.used = true
	return nil
}

// remoteHeaders adds the REAPI headers of --remote-header-env and
// --remote-header-stdin to cfg, each replacing a header of the same name
// (in any case) from the config file. Header values come only from the
// config file, the environment or stdin: a value on the command line is
// visible to every local user (ps, /proc/PID/cmdline), so --remote-header is
// refused. Errors name header keys, never values nor variable names (a
// misplaced value would be one).
func (a *app) remoteHeaders(cfg *strata.Config) error {
	if a.headerArgv {
		return usagef("--remote-header is refused: a header value on the command line is visible to every local user; " +
			"put it under remote-header in the --config file (mode 0600), or pass --remote-header-env KEY=ENVVAR " +
			"(the value of environment variable ENVVAR) or --remote-header-stdin KEY (the first line of stdin)")
	}
	if a.headerEnv == nil && a.headerStdin == "" {
		return nil
	}
	headers := map[string]string{}
	for k, v := range cfg.RemoteHeaders {
		headers[k] = v
	}
	set := func(key, value string) {
		for k := range headers {
			if strings.EqualFold(k, key) {
				delete(headers, k)
			}
		}
		headers[key] = value
	}
	for _, kv := range a.headerEnv {
		key, env, ok := strings.Cut(kv, "=")
		if !ok || key == "" || env == "" {
			return usagef("--remote-header-env wants KEY=ENVVAR, the header name and the name of the environment variable holding its value")
		}
		v := os.Getenv(env)
		if v == "" {
			return usagef("--remote-header-env %s=…: the environment variable named after '=' is unset or empty", key)
		}
		set(key, v)
	}
	if a.headerStdin != "" {
		if a.passStdin {
			return usagef("--remote-header-stdin and --password-stdin both read stdin; pass the header with --remote-header-env or the config file")
		}
		line, err := bufio.NewReader(a.stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("--remote-header-stdin: read stdin: %w", err)
		}
		v := strings.TrimRight(line, "\r\n")
		if v == "" {
			return usagef("--remote-header-stdin %s: stdin held no value", a.headerStdin)
		}
		set(a.headerStdin, v)
	}
	cfg.RemoteHeaders = headers
	return nil
}

// mirrorFlag is a repeatable REGISTRY=MIRROR flag.
type mirrorFlag struct{ m *map[string][]string }

func (f mirrorFlag) String() string {
	if f.m == nil {
		return ""
	}
	return strings.Join(f.GetSlice(), ",")
}
func (f mirrorFlag) Type() string { return "registry=mirror" }
func (f mirrorFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" || v == "" {
		return fmt.Errorf("want REGISTRY=MIRROR, got %q", s)
	}
	if *f.m == nil {
		*f.m = map[string][]string{}
	}
	(*f.m)[k] = append((*f.m)[k], v)
	return nil
}
func (f mirrorFlag) Append(s string) error { return f.Set(s) }
func (f mirrorFlag) Replace(ss []string) error {
	*f.m = nil
	for _, s := range ss {
		if err := f.Set(s); err != nil {
			return err
		}
	}
	return nil
}
func (f mirrorFlag) GetSlice() []string {
	var keys []string
	for k := range *f.m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []string
	for _, k := range keys {
		for _, v := range (*f.m)[k] {
			out = append(out, k+"="+v)
		}
	}
	return out
}

var _ = os.Stdout
