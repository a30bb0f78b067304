package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/strata-oci/strata/materialize/host"
	"github.com/strata-oci/strata/registry/credential"
)

// app holds one invocation's state: its streams, the configuration its
// flags and config file describe, and the exit code a command chose.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	flagCfg    host.Config // what the flags set (only changed ones are used)
	cfg        host.Config // defaults, then the config file, then changed flags
	configPath string
	username   string
	passStdin  bool
	json       bool
	exit       int
}

func newApp(stdin io.Reader, stdout, stderr io.Writer) *app {
	return &app{stdin: stdin, stdout: stdout, stderr: stderr, flagCfg: host.Default()}
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
	}
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&a.configPath, "config", "", "YAML config `FILE` (keys are the flag names)")
	bindConfigFlags(pf, &a.flagCfg)
	pf.StringVar(&a.username, "username", "", "registry user name (the password comes from --password-stdin)")
	pf.BoolVar(&a.passStdin, "password-stdin", false, "read the registry password from the first line of stdin")
	pf.BoolVar(&a.json, "json", false, "print records as JSON")
	root.AddCommand(a.fetchCommand(), a.materializeCommand(), a.lsCommand(), a.statCommand(), a.catCommand(),
		a.duCommand(), a.evictCommand(), a.verifyCommand(), a.gcCommand(), a.refsCommand(), a.metricsCommand())
	return root
}

// bindConfigFlags defines one flag per config key, named like the key.
// Credentials and the identity key are file-only (secrets do not belong in
// argv).
func bindConfigFlags(fs *pflag.FlagSet, c *host.Config) {
	fs.StringVar(&c.Disk.Root, "root", c.Disk.Root, "disk tier root `DIR`")
	fs.Var(&c.Memory.Size, "memory", "memory tier `SIZE` (e.g. 256MiB; 0 disables it)")
	fs.Var(&c.Memory.MaxBlob, "memory-max-blob", "largest blob the memory tier keeps (default 64MiB)")
	fs.Var(&c.Disk.Budget, "disk-budget", "disk tier budget `SIZE` (0: unbounded)")
	fs.StringVar(&c.Remote.Endpoint, "remote", c.Remote.Endpoint, "shared REAPI tier `grpc://HOST:PORT` or grpcs://HOST[:PORT]")
	fs.StringVar(&c.Remote.Instance, "remote-instance", c.Remote.Instance, "REAPI instance `NAME`")
	fs.Var(kvFlag{&c.Remote.Headers}, "remote-header", "`KEY=VALUE` header sent to the REAPI server (repeatable; e.g. an API key)")
	fs.StringVar(&c.Remote.TLSCA, "remote-tls-ca", c.Remote.TLSCA, "PEM `FILE` of CAs for a grpcs:// remote")
	fs.StringVar(&c.Remote.TLSCert, "remote-tls-cert", c.Remote.TLSCert, "PEM client certificate `FILE` (mTLS)")
	fs.StringVar(&c.Remote.TLSKey, "remote-tls-key", c.Remote.TLSKey, "PEM client key `FILE` (mTLS)")
	fs.StringVar(&c.Remote.TLSServerName, "remote-tls-server-name", c.Remote.TLSServerName, "server `NAME` to verify in the remote's certificate")
	fs.BoolVar(&c.Remote.AnonymousShared, "remote-anonymous-shared", c.Remote.AnonymousShared, "let anonymous pulls read and write the shared remote tier")
	fs.Var(mirrorFlag{&c.Registry.Mirrors}, "mirror", "`REGISTRY=MIRROR` tried before REGISTRY (repeatable, in order)")
	fs.StringArrayVar(&c.Registry.AllowCIDRs, "allow-cidr", c.Registry.AllowCIDRs, "open the network policy to `CIDR` (repeatable; e.g. 127.0.0.0/8 for a local registry)")
	fs.BoolVar(&c.Registry.Keychain, "keychain", c.Registry.Keychain, "use the Docker/Podman keychain (~/.docker/config.json, credential helpers)")
	fs.Var(&c.Fetch.TagTTL, "tag-ttl", "how long a resolved tag is trusted without asking the registry")
	fs.Var(&c.Fetch.ProofTTL, "proof-ttl", "how long an access proof admits a caller without asking the registry")
	fs.StringVar(&c.Fetch.Platform, "platform", c.Fetch.Platform, "`os/arch[/variant]` to select from multi-platform images (default: this machine)")
	fs.StringVar(&c.Overlay.Root, "overlay-root", c.Overlay.Root, "`DIR` of extracted overlay layers (default ROOT/overlay)")
	fs.Var(&c.Overlay.Budget, "overlay-budget", "budget `SIZE` of unleased extracted layers (0: unbounded)")
	fs.BoolVar(&c.Overlay.UserXattr, "overlay-userxattr", c.Overlay.UserXattr, "mark opaque dirs with user.overlay.opaque (mount with userxattr)")
	fs.StringVar(&c.Ext4.WorkDir, "ext4-dir", c.Ext4.WorkDir, "`DIR` of ext4 images handed out (default ROOT/ext4)")
	fs.Var(&c.Ext4.FreeBytes, "ext4-free", "free space `SIZE` every ext4 image gets")
	fs.Int64Var(&c.Ext4.FreeInodes, "ext4-free-inodes", c.Ext4.FreeInodes, "free inodes every ext4 image gets")
	fs.BoolVar(&c.NoAdmin, "no-admin", c.NoAdmin, "do not serve the admin socket while this blobctl holds the root")
}

// loadConfig builds a.cfg: defaults, then the config file, then every flag
// the command line set.
func (a *app) loadConfig(cmd *cobra.Command) error {
	cfg := host.Default()
	if a.configPath != "" {
		var err error
		if cfg, err = host.Load(a.configPath, cfg); err != nil {
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
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	if a.passStdin && a.username == "" {
		return usagef("--password-stdin needs --username")
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
func (a *app) openHost(ctx context.Context) (*host.Host, *prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	h, err := host.Open(ctx, a.cfg, reg)
	if errors.Is(err, host.ErrLocked) {
		return nil, nil, fmt.Errorf("%w: %w (this command needs the root itself: stop that process or use another --root)", errLockedNoAdmin, err)
	}
	return h, reg, err
}

// openAdmin opens the root directly or, when another process holds it,
// connects to that process's admin socket.
func (a *app) openAdmin(ctx context.Context) (host.Admin, error) {
	h, _, err := a.openHost(ctx)
	if err == nil {
		return h, nil
	}
	if !errors.Is(err, errLockedNoAdmin) {
		return nil, err
	}
	c, derr := host.Dial(ctx, a.cfg.Disk.Root)
	if derr != nil {
		if errors.Is(derr, host.ErrNoAdmin) {
			return nil, fmt.Errorf("%w: %s is held by another process and nobody answers on its admin socket (%v)", errLockedNoAdmin, a.cfg.Disk.Root, derr)
		}
		return nil, derr
	}
	return c, nil
}

// printJSON writes v as indented JSON.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// kvFlag is a repeatable KEY=VALUE flag filling a map.
type kvFlag struct{ m *map[string]string }

func (f kvFlag) String() string {
	if f.m == nil {
		return ""
	}
	return strings.Join(f.GetSlice(), ",")
}
func (f kvFlag) Type() string { return "key=value" }
func (f kvFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got a value without '=' or without a key")
	}
	if *f.m == nil {
		*f.m = map[string]string{}
	}
	(*f.m)[k] = v
	return nil
}
func (f kvFlag) Append(s string) error { return f.Set(s) }
func (f kvFlag) Replace(ss []string) error {
	*f.m = nil
	for _, s := range ss {
		if err := f.Set(s); err != nil {
			return err
		}
	}
	return nil
}
func (f kvFlag) GetSlice() []string {
	var out []string
	for k, v := range *f.m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
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
