package disk

import (
	"bytes"
	"context"
	"errors"
	"github.com/strata-oci/strata/internal/testenv"
	"io"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
)

// testClock is a clock that advances one second per reading, so access
// order is strict without depending on wall-clock resolution.
type testClock struct{ n atomic.Int64 }

func (c *testClock) Now() time.Time {
	return time.Unix(1_700_000_000+c.n.Add(1), 0)
}

// openTier opens a tier on a fresh root (or cfg.Root) and closes it at the
// end of the test.
func openTier(t testing.TB, cfg Config) *Tier {
	t.Helper()
	if cfg.Root == "" {
		cfg.Root = t.TempDir()
	}
	tr, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open(%s): %v", cfg.Root, err)
	}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil && !errors.Is(err, blob.ErrUnavailable) {
			t.Errorf("Close: %v", err)
		}
	})
	return tr
}

// randomBytes returns n deterministic pseudo-random bytes.
func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)})
	r.Read(b)
	return b
}

func put(t testing.TB, tr *Tier, data []byte) blob.Digest {
	t.Helper()
	d := blob.FromBytes(data)
	if err := tr.Put(context.Background(), d, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatalf("Put(%s): %v", d, err)
	}
	return d
}

// readAll opens d and reads it to the end.
func readAll(tr *Tier, d blob.Digest) ([]byte, error) {
	rc, _, err := tr.Open(context.Background(), d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func mustRead(t testing.TB, tr *Tier, d blob.Digest, want []byte) {
	t.Helper()
	got, err := readAll(tr, d)
	if err != nil {
		t.Fatalf("read %s: %v", d, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %s: got %d bytes, want %d (content differs)", d, len(got), len(want))
	}
}

func requireMiss(t testing.TB, tr *Tier, d blob.Digest) {
	t.Helper()
	if _, err := tr.Stat(context.Background(), d); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Stat(%s) = %v, want ErrNotFound", d, err)
	}
}

// dirEntries returns the names in dir (none if it does not exist).
func dirEntries(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// requireRoot skips a test that needs root, or fails it under CI=true,
// where it must run.
func requireRoot(t *testing.T, what string) {
	t.Helper()
	testenv.RequireRoot(t, what)
}

// requireBinary is requireRoot for a program the test runs.
func requireBinary(t *testing.T, name string) {
	t.Helper()
	testenv.RequireBinary(t, name, "this test")
}

func usage(t testing.TB, tr *Tier) blob.Usage {
	t.Helper()
	u, err := tr.Usage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return u
}
