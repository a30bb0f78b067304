// Package reapisrv serves the shared REAPI tier of a harness run: the
// Remote Execution API SDK's fake CAS and ActionCache (internal/reapitest)
// over real gRPC on 127.0.0.1, for the whole run, so that every job's
// executor (a child process) can reach it.
package reapisrv

import (
	"fmt"
	"sync"
	"testing"

	"github.com/strata-oci/strata/internal/reapitest"
)

// Instance is the REAPI instance name the server serves.
const Instance = reapitest.Instance

// Server is a running fake REAPI server.
type Server struct {
	// Endpoint is "grpc://127.0.0.1:port".
	Endpoint string
	// Desc says what serves it, for the report.
	Desc string

	tb *runTB
}

// Options are those of Start: Zstd makes the server advertise zstd
// compressed-blobs and batch compression, as bazel-remote, Buildbarn and
// BuildBuddy do, and keep the zstd form of what it served compressed
// (reapitest.Options.StoredZstd).
type Options struct {
	Zstd bool
}

// Start serves a fresh, empty fake REAPI server on 127.0.0.1 until Close.
func Start(o Options) (s *Server, err error) {
	tb := &runTB{}
	defer func() {
		if r := recover(); r != nil {
			if f, ok := r.(fatal); ok {
				tb.cleanup()
				s, err = nil, fmt.Errorf("reapisrv: %s", string(f))
				return
			}
			panic(r)
		}
	}()
	srv := reapitest.NewServer(tb, reapitest.Options{Zstd: o.Zstd, StoredZstd: o.Zstd})
	desc := "the REAPI SDK's fake CAS (in memory) over gRPC on 127.0.0.1, served by the harness process, ByteStream messages of 64 KiB (the fake's default)"
	if o.Zstd {
		desc += ", zstd compressed-blobs advertised; a blob read compressed is compressed once and its zstd form kept for later reads (as bazel-remote stores blobs zstd-compressed by default)"
	}
	return &Server{Endpoint: srv.Endpoint(), Desc: desc, tb: tb}, nil
}

// Close stops the server and drops its content.
func (s *Server) Close() { s.tb.cleanup() }

// fatal is the panic value of runTB.Fatalf, recovered by Start.
type fatal string

// runTB is the testing.TB reapitest needs outside a test: Helper,
// Fatalf (a panic Start recovers) and Cleanup (run by Close). Any other
// method would panic on the nil embedded interface; reapitest calls none.
type runTB struct {
	testing.TB
	mu  sync.Mutex
	fns []func()
}

func (t *runTB) Helper() {}

func (t *runTB) Fatalf(format string, args ...any) { panic(fatal(fmt.Sprintf(format, args...))) }

func (t *runTB) Logf(format string, args ...any) {}

func (t *runTB) Cleanup(f func()) {
	t.mu.Lock()
	t.fns = append(t.fns, f)
	t.mu.Unlock()
}

func (t *runTB) cleanup() {
	t.mu.Lock()
	fns := t.fns
	t.fns = nil
	t.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}
