package overlay

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// TestCloseStopsExtraction: Close cancels an extraction that runs on its
// own context (its caller still waits), waits until it has ended and left
// no partial layer, and refuses later extractions.
func TestCloseStopsExtraction(t *testing.T) {
	base := tartest.FromV1(t, tartest.Image(t, tartest.New().File("f", []byte("x")).Gzip()))
	gate := make(chan struct{}) // never opened
	img := gatedImageOf(base, gate)
	root := t.TempDir()
	m := newMaterializer(t, Config{Root: root})
	errc := make(chan error, 1)
	go func() { _, err := m.Materialize(context.Background(), img); errc <- err }()
	waitFor(t, func() bool { m.mu.Lock(); defer m.mu.Unlock(); return len(m.flights) == 1 })

	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Materialize during Close: %v, want context.Canceled", err)
	}
	if es, _ := os.ReadDir(m.path("tmp")); len(es) != 0 {
		t.Errorf("Close returned with %d partial extractions left", len(es))
	}
	if got := extractions(m); got != 0 {
		t.Errorf("%v layers extracted", got)
	}
	if _, err := m.Materialize(context.Background(), base); !errors.Is(err, context.Canceled) {
		t.Errorf("Materialize after Close: %v, want context.Canceled", err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
