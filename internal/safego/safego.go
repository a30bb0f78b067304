// Package safego turns a panic on a goroutine Strata starts into an error,
// as a last line of defence: a panic on a worker goroutine (a reader fed
// bytes a registry chose, a decompressor, an extractor) would otherwise end
// the whole process and every tenant's work in it.
//
// It is not a way to handle errors. A recovered panic is a bug, reported as
// an error wrapping ErrPanic with the panic value and a short stack, so it
// is seen and fixed; the work that panicked is failed, not retried.
package safego

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
)

// ErrPanic is wrapped by the error Recover makes of a panic.
var ErrPanic = errors.New("recovered panic")

// maxFrames bounds the stack kept in the error; maxValue the panic value's
// printed length.
const (
	maxFrames = 12
	maxValue  = 512
)

// Recover, deferred directly (defer safego.Recover(&err, "what")), stops a
// panic of the calling goroutine and stores in *err an error wrapping
// ErrPanic that names what, the panic value and the stack where it
// happened (function names and file:line, file base names only). When
// there is no panic it does nothing, so *err keeps whatever the function
// returned. A panic value that is an error stays reachable with errors.Is
// and errors.As.
//
// It must be the deferred function itself: recover stops a panic only when
// called directly by a deferred call.
func Recover(err *error, what string) {
	v := recover()
	if v == nil {
		return
	}
	*err = newPanicError(what, v)
}

// Call runs fn and returns its error, or the error Recover makes of a panic
// in fn.
func Call(what string, fn func() error) (err error) {
	defer Recover(&err, what)
	return fn()
}

func newPanicError(what string, v any) error {
	stack := shortStack()
	if e, ok := v.(error); ok {
		return fmt.Errorf("%s: %w: %w [stack: %s]", what, ErrPanic, e, stack)
	}
	val := fmt.Sprint(v)
	if len(val) > maxValue {
		val = val[:maxValue] + "..."
	}
	return fmt.Errorf("%s: %w: %s [stack: %s]", what, ErrPanic, val, stack)
}

// shortStack describes the panicking goroutine's stack from the frame that
// panicked outwards, leaving out the runtime's and this package's frames.
func shortStack() string {
	pcs := make([]uintptr, 64)
	n := runtime.Callers(2, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	var out []string
	for {
		f, more := frames.Next()
		if !skipFrame(f.Function) {
			out = append(out, fmt.Sprintf("%s (%s:%d)", shortFunc(f.Function), filepath.Base(f.File), f.Line))
			if len(out) == maxFrames {
				if more {
					out = append(out, "...")
				}
				break
			}
		}
		if !more {
			break
		}
	}
	return strings.Join(out, " < ")
}

func skipFrame(fn string) bool {
	return strings.HasPrefix(fn, "runtime.") || strings.Contains(fn, "/internal/safego.")
}

// shortFunc drops the module path: "github.com/x/y/pkg.(*T).M" -> "pkg.(*T).M".
func shortFunc(fn string) string {
	if i := strings.LastIndex(fn, "/"); i >= 0 {
		return fn[i+1:]
	}
	return fn
}
