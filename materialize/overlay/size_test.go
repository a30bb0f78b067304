package overlay

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/safego"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// TestMaterializeExtremeDeclaredSizes: a layer whose declared size is
// 2^63-1 (or otherwise wrong) fails Materialize with a mismatch, without a
// panic on the extraction goroutines (nor a recovered one), and leaves no
// lease and no temp directory.
func TestMaterializeExtremeDeclaredSizes(t *testing.T) {
	good := tartest.New().File("ok", []byte("ok")).Gzip()
	for _, tc := range tartest.WrongSizes() {
		t.Run(tc.Name, func(t *testing.T) {
			m := newMaterializer(t, Config{})
			img := tartest.RawImage(
				tartest.RawLayer(good, types.OCILayer),
				tc.Layer,
			)
			_, err := m.Materialize(context.Background(), img)
			if !errors.Is(err, blob.ErrMismatch) {
				t.Fatalf("err = %v, want a mismatch", err)
			}
			if errors.Is(err, safego.ErrPanic) {
				t.Fatalf("a panic was recovered: %v", err)
			}
			if u := m.Usage(); u.Leased != 0 {
				t.Fatalf("leases left after failure: %+v", u)
			}
			m.running.Wait()
			if es, _ := os.ReadDir(filepath.Join(m.root, "tmp")); len(es) != 0 {
				t.Fatalf("temp dirs left after failure: %d", len(es))
			}
		})
	}
}
