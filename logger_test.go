package strata

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
)

// syncBuffer is a bytes.Buffer safe for the goroutines of a host.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// damagedRoot returns the config of a root that holds a blob but lost its
// index, with leftovers of killed work in the disk tier's, the overlay
// materializer's and the ext4 materializer's temporary directories: what
// Open repairs and should tell an operator about.
func damagedRoot(t *testing.T) Config {
	t.Helper()
	ctx := context.Background()
	cfg := testConfig(t)
	h, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("a blob the index forgets")
	if err := h.stack.Put(ctx, blob.FromBytes(data), int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	root := cfg.Root
	old := time.Now().Add(-48 * time.Hour)
	for _, p := range []string{
		filepath.Join(root, "tmp", "0123456789abcdef-put"),
		filepath.Join(root, "overlay", "tmp", "extract-1", "file"),
		filepath.Join(root, "ext4", "tmp", "convert-1.ext4"),
	} {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("leftover"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.RemoveAll(filepath.Join(root, "index")); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestOpenLogsToConfigLogger: what Open repairs (an index rebuilt, a
// leftover Put, a killed extraction, a killed conversion) reaches
// Config.Logger, from every component that repaired it.
func TestOpenLogsToConfigLogger(t *testing.T) {
	cfg := damagedRoot(t)
	var buf syncBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		desc, want string
	}{
		{"the disk tier rebuilt its index", "index missing; rebuilt from the blob files"},
		{"the disk tier removed a leftover Put", "disk tier reconciled"},
		{"the overlay materializer removed a killed extraction", "overlay: removed the leftover of an extraction"},
		{"the ext4 materializer removed a killed conversion", "ext4: removed leftovers of conversions"},
	} {
		if !strings.Contains(buf.String(), tc.want) {
			t.Errorf("%s: no %q in the log:\n%s", tc.desc, tc.want, buf.String())
		}
	}
}

// TestOpenLogsNothingByDefault: a library user who sets no Logger gets no
// output, not even on slog's default logger, whatever Open repairs.
func TestOpenLogsNothingByDefault(t *testing.T) {
	cfg := damagedRoot(t)
	var buf syncBuffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	defer slog.SetDefault(prev)
	h, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if buf.String() != "" {
		t.Errorf("Open with no Logger wrote to slog's default logger:\n%s", buf.String())
	}
}
