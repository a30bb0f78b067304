// Command blobctl inspects, warms and evicts the Strata tiers of a host:
// it fetches and materializes images, lists, verifies and evicts blobs, and
// prints the metrics of the process holding the disk root.
//
// Run "blobctl --help" for the commands and "blobctl CMD --help" for each
// command's flags and examples. docs/configuration.md lists every config key.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/host"
	"github.com/strata-oci/strata/registry"
)

// Exit codes (documented in the root command's help and docs/operations.md).
const (
	exitOK          = 0
	exitCheckFailed = 1 // verify found corrupt or missing blobs; cat read corrupt content
	exitUsage       = 2 // bad flags, arguments or config
	exitNotFound    = 3 // no such blob, ref, image or tag
	exitDenied      = 4 // the registry refused the credentials
	exitUnavailable = 5 // registry, remote tier or admin endpoint unreachable
	exitLocked      = 6 // the root is held by a process that serves no admin endpoint
	exitFailure     = 7 // any other failure
)

const exitCodesHelp = `Exit codes:
  0  success
  1  a check failed: verify found corrupt or missing blobs, or cat read corrupt content
  2  usage error: bad flags, arguments or config file
  3  not found: no such blob, image, tag or platform
  4  access denied by the registry
  5  unavailable: registry, remote tier or admin endpoint unreachable
  6  the root is held by another process that serves no admin endpoint
     (materialize: held by any other process)
  7  any other failure`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes blobctl with args and returns its exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	app := newApp(stdin, stdout, stderr)
	cmd := app.rootCommand()
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return app.exit
	}
	fmt.Fprintf(stderr, "blobctl: %v\n", err)
	return exitCode(err)
}

// usageError marks errors in how blobctl was called.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// checkFailed marks a check that completed and found problems.
var errCheckFailed = errors.New("check failed")

var errLockedNoAdmin = errors.New("root in use")

func exitCode(err error) int {
	var ue usageError
	switch {
	case errors.As(err, &ue):
		return exitUsage
	case errors.Is(err, errCheckFailed), errors.Is(err, blob.ErrMismatch):
		return exitCheckFailed
	case errors.Is(err, errLockedNoAdmin):
		return exitLocked
	case errors.Is(err, blob.ErrInvalidDigest), errors.Is(err, registry.ErrInvalidReference),
		errors.Is(err, manifest.ErrInvalidPlatform), errors.Is(err, host.ErrInvalidRequest):
		return exitUsage
	case errors.Is(err, registry.ErrDenied):
		return exitDenied
	case errors.Is(err, manifest.ErrNoMatchingPlatform), errors.Is(err, blob.ErrNotFound):
		return exitNotFound
	case errors.Is(err, blob.ErrUnavailable), errors.Is(err, registry.ErrDeniedAddress):
		return exitUnavailable
	}
	return exitFailure
}
