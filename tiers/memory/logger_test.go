package memory_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers/memory"
)

// TestEvictionLogged: a Put that evicts blobs to fit the budget tells
// Config.Logger (at Debug) how many and how many bytes; one that fits says
// nothing.
func TestEvictionLogged(t *testing.T) {
	var buf bytes.Buffer
	tier := newTier(t, memory.Config{Budget: 100, Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	ctx := context.Background()
	put := func(b []byte) {
		t.Helper()
		if err := tier.Put(ctx, blob.FromBytes(b), int64(len(b)), bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	put(bytes.Repeat([]byte("a"), 40))
	put(bytes.Repeat([]byte("b"), 40))
	if buf.Len() != 0 {
		t.Fatalf("Puts within the budget logged:\n%s", buf.String())
	}
	put(bytes.Repeat([]byte("c"), 61)) // 141 bytes: evicts a, then b
	for _, want := range []string{"level=DEBUG", "evicted", "blobs=2", "bytes=80", "tier=memory"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("no %q in the log:\n%s", want, buf.String())
		}
	}
}
