package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// versionInfo is what "blobctl version" prints.
type versionInfo struct {
	Module   string `json:"module"`
	Version  string `json:"version"`            // module version, "(devel)" for a local build
	Commit   string `json:"commit,omitempty"`   // VCS revision the binary was built from
	Time     string `json:"time,omitempty"`     // commit time (RFC 3339)
	Modified bool   `json:"modified,omitempty"` // built from a tree with uncommitted changes
	Go       string `json:"go"`
	Platform string `json:"platform"`
}

// buildVersion reads the version stamped into the binary by the Go
// toolchain. A binary built without module or VCS information (go run, a
// test binary) reports what it has: at least the Go version.
func buildVersion() versionInfo {
	v := versionInfo{Version: "unknown", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	v.Module = bi.Main.Path
	if bi.Main.Version != "" {
		v.Version = bi.Main.Version
	}
	if bi.GoVersion != "" {
		v.Go = bi.GoVersion
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print blobctl's version, commit and Go version",
		Long: `Version prints the module version of blobctl, the VCS commit it was built
from (with "+modified" when the tree had uncommitted changes), the commit time,
and the Go version and platform it was built for. It reads no config and opens
no root.`,
		Example: `  blobctl version
  blobctl version --json`,
		Args: exactArgs(0),
		// No config is read: version works whatever the config says.
		PersistentPreRunE: func(*cobra.Command, []string) error { return nil },
		RunE: func(cmd *cobra.Command, args []string) error {
			v := buildVersion()
			if a.json {
				return a.printJSON(v)
			}
			commit := v.Commit
			if commit == "" {
				commit = "unknown"
			}
			if v.Modified {
				commit += "+modified"
			}
			fmt.Fprintf(a.stdout, "blobctl %s\n  commit %s", v.Version, commit)
			if v.Time != "" {
				fmt.Fprintf(a.stdout, " (%s)", v.Time)
			}
			fmt.Fprintf(a.stdout, "\n  %s %s\n", v.Go, v.Platform)
			return nil
		},
	}
}
