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
	"github.com/strata-oci/strata/internal/admin"
	"github.com/strata-oci/strata/manifest"
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
	// An interrupted command exits 128 + the signal: 130 (SIGINT), 143 (SIGTERM).
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
  7  any other failure (also: output that could not be written)
  8  fetch read the image but could not store all of it in the disk tier
     (no space left on device, or a blob larger than the tier accepts)
  130  interrupted (SIGINT): cancelled, temporary files removed
  143  terminated (SIGTERM), likewise`

func main() {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := (<-sigs).(syscall.Signal)
		// The command's context ends: it stops, removes its temp files
		// and returns; run reports the signal.
		cancel(interrupted{s})
		// A second signal stops at once.
		s = (<-sigs).(syscall.Signal)
		os.Exit(128 + int(s))
	}()
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	os.Exit(code)
}

// interrupted is the cause of a context canceled by SIGINT or SIGTERM.
type interrupted struct{ sig syscall.Signal }

func (i interrupted) Error() string { return "interrupted (" + i.sig.String() + ")" }

// run executes blobctl with args and returns its exit code. When ctx ends
// because of a signal (its cause is an interrupted), the command is
// reported as interrupted and the exit code is 128 + the signal number
// (130 for SIGINT, 143 for SIGTERM), whatever the command returned.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	out := &outWriter{w: stdout}
	app := newApp(stdin, out, stderr)
	cmd := app.rootCommand()
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	var sig interrupted
	if errors.As(context.Cause(ctx), &sig) {
		fmt.Fprintln(stderr, "blobctl: interrupted")
		if app.verbose && err != nil {
			fmt.Fprintf(stderr, "  detail: %v\n", err)
		}
		return 128 + int(sig.sig)
	}
	if out.err != nil {
		// Output that did not reach its destination is a failure, even
		// for a command that reported none (a table on a full disk).
		err = errors.Join(err, fmt.Errorf("%w: %w", errOutput, out.err))
	}
	if err == nil {
		return app.exit
	}
	app.report(err)
	return exitCode(err)
}

// errOutput marks a failure to write the command's output to stdout.
var errOutput = errors.New("cannot write the output")

// outWriter is stdout, remembering its first write error: commands print
// through fmt and tabwriter, whose errors they do not all check, and run
// turns the error into a failure.
type outWriter struct {
	w   io.Writer
	err error
}

func (o *outWriter) Write(p []byte) (int, error) {
	if o.err != nil {
		return 0, o.err
	}
	n, err := o.w.Write(p)
	if err != nil {
		o.err = err
	}
	return n, err
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
		errors.Is(err, manifest.ErrInvalidPlatform), errors.Is(err, admin.ErrInvalidRequest):
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
