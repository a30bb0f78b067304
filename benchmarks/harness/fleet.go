package main

import (
	"fmt"
	"io"
	"sort"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/fleettest"
)

// fleetRow is one (executors, leases) measurement of the fleet benchmark.
type fleetRow struct {
	n      int
	leases bool
	gets   float64       // registry GETs per layer, over the fleet
	ready  time.Duration // median time until an executor has read every layer
	last   time.Duration // time until the last executor was ready
	errs   int
}

// runFleet measures fleet-wide pull collapse (issue 19): N executors, each
// with its own memory and disk tiers, sharing one REAPI server (the SDK
// fake over gRPC on loopback) and one in-process registry, start the same
// private 8-layer image (1 MiB layers) at the same moment, with and
// without fill leases, reps times each, alternating. It prints a Markdown
// table: registry GETs per layer and time-to-ready per executor.
func runFleet(w io.Writer, reps int) error {
	var rows []fleetRow
	for _, n := range []int{1, 4, 16} {
		for _, leases := range []bool{false, true} {
			rows = append(rows, fleetRow{n: n, leases: leases})
		}
	}
	samples := make([][]time.Duration, len(rows))
	lasts := make([][]time.Duration, len(rows))
	for rep := range reps {
		for i := range rows {
			r := &rows[i]
			// testing.Benchmark gives the fleet a testing.TB (temp dirs,
			// cleanups) outside go test; one iteration per call.
			var fail error
			testing.Benchmark(func(b *testing.B) {
				if b.N > 1 {
					b.SkipNow()
				}
				fl := fleettest.New(b, fleettest.Options{N: r.n, Leases: r.leases})
				ref, layers := fl.Push(b)
				res := fl.Run(ref)
				var last time.Duration
				for _, x := range res {
					if x.Err != nil {
						r.errs++
						fail = x.Err
						continue
					}
					samples[i] = append(samples[i], x.Ready)
					last = max(last, x.Ready)
				}
				lasts[i] = append(lasts[i], last)
				total := 0
				for _, l := range layers {
					total += fl.GETs(blob.FromBytes(l))
				}
				r.gets += float64(total) / float64(len(layers)) / float64(reps)
			})
			if fail != nil {
				return fmt.Errorf("fleet n=%d leases=%v (rep %d): %w", r.n, r.leases, rep, fail)
			}
		}
	}
	fmt.Fprintln(w, "| executors | leases | registry GETs per layer | median time-to-ready per executor | slowest executor (median over reps) |")
	fmt.Fprintln(w, "|---:|---|---:|---:|---:|")
	for i, r := range rows {
		fmt.Fprintf(w, "| %d | %v | %.2f | %d ms | %d ms |\n", r.n, r.leases, r.gets, median(samples[i]).Milliseconds(), median(lasts[i]).Milliseconds())
	}
	return nil
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
