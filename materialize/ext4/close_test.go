package ext4

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// TestCloseStopsConversion: Close cancels a conversion that runs on its own
// context (no caller gave up), waits until it has removed its temporary
// file, and refuses later conversions.
func TestCloseStopsConversion(t *testing.T) {
	c := newConverter(t, bigStore())
	gate := make(chan struct{}) // never opened: the conversion waits for its last layer
	img := &testImage{layers: append(sampleImage().layers, &gatedLayer{rawLayer: rawLayer{data: tartest.New().File("late", []byte("l")).Tar()}, gate: gate})}
	errc := make(chan error, 1)
	go func() { _, err := c.Materialize(context.Background(), img, nil); errc <- err }()

	deadline := time.Now().Add(time.Minute) // a bound against a hang, not a speed check
	for {
		if es, _ := os.ReadDir(c.tmpDir); len(es) > 0 {
			break // the conversion is under way
		}
		if time.Now().After(deadline) {
			t.Fatal("the conversion never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Materialize during Close: %v, want context.Canceled", err)
	}
	if es, _ := os.ReadDir(c.tmpDir); len(es) != 0 {
		t.Errorf("Close returned with %d temporary files left", len(es))
	}
	if _, err := c.Materialize(context.Background(), sampleImage(), nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Materialize after Close: %v, want context.Canceled", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
