package safego_test

import (
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/strata-oci/strata/internal/safego"
)

var errOwn = errors.New("own error")

//go:noinline
func sliceOutOfRange(n int) []byte {
	b := make([]byte, 4)
	return b[:n]
}

func TestCall(t *testing.T) {
	tests := []struct {
		desc     string
		fn       func() error
		want     error    // errors.Is target; nil: no error
		panicked bool     // the error wraps ErrPanic
		contains []string // substrings of the message
	}{
		{desc: "no panic, no error", fn: func() error { return nil }},
		{desc: "no panic, the function's error is kept", fn: func() error { return errOwn }, want: errOwn},
		{
			desc: "panic with a string", fn: func() error { panic("boom") },
			want: safego.ErrPanic, panicked: true, contains: []string{"reading: ", "boom", "safego_test.TestCall"},
		},
		{
			desc: "panic with an error stays reachable", fn: func() error { panic(io.ErrUnexpectedEOF) },
			want: io.ErrUnexpectedEOF, panicked: true,
		},
		{
			desc: "runtime error: slice bounds (the overflow class of bug)", fn: func() error { _ = sliceOutOfRange(-1); return nil },
			want: safego.ErrPanic, panicked: true, contains: []string{"slice bounds out of range", "sliceOutOfRange (safego_test.go:"},
		},
		{
			desc: "panic(nil)", fn: func() error { panic(nil) },
			want: safego.ErrPanic, panicked: true,
		},
		{
			desc: "a huge panic value is cut short", fn: func() error { panic(strings.Repeat("x", 1<<20)) },
			want: safego.ErrPanic, panicked: true, contains: []string{"xxx..."},
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			err := safego.Call("reading", tc.fn)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("err = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want one wrapping %v", err, tc.want)
			}
			if got := errors.Is(err, safego.ErrPanic); got != tc.panicked {
				t.Fatalf("errors.Is(err, ErrPanic) = %v, want %v (err %v)", got, tc.panicked, err)
			}
			msg := err.Error()
			for _, s := range tc.contains {
				if !strings.Contains(msg, s) {
					t.Errorf("message %q does not contain %q", msg, s)
				}
			}
			if len(msg) > 4096 {
				t.Errorf("message is %d bytes long, want a short one", len(msg))
			}
			if strings.Contains(msg, "runtime.gopanic") || strings.Contains(msg, "safego.Recover") {
				t.Errorf("message shows the machinery's frames: %s", msg)
			}
		})
	}
}

// TestRecoverOnAGoroutine: the use it is for: a goroutine that would have
// crashed the process reports the panic as its error instead.
func TestRecoverOnAGoroutine(t *testing.T) {
	errc := make(chan error, 1)
	go func() {
		var err error
		defer func() { errc <- err }()
		defer safego.Recover(&err, "worker")
		var m map[string]int
		m["x"] = 1 // assignment to a nil map
	}()
	err := <-errc
	if !errors.Is(err, safego.ErrPanic) || !strings.Contains(err.Error(), "worker: ") || !strings.Contains(err.Error(), "nil map") {
		t.Fatalf("err = %v", err)
	}
	var re runtime.Error
	if !errors.As(err, &re) {
		t.Fatalf("the runtime error is not reachable with errors.As: %v", err)
	}
}
