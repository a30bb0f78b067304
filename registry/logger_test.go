package registry_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/strata-oci/strata/registry"
)

// lockedBuffer is a bytes.Buffer safe for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestMirrorFallbackLogged: a mirror the client moves past (here: it does
// not hold the blob) is reported to Config.Logger with the registry, the
// mirror and the reason, and the report holds none of the mirror's
// credentials.
func TestMirrorFallbackLogged(t *testing.T) {
	m := newMirrorRig(t)
	var buf lockedBuffer
	const secret = "mirror-s3cret-password"
	r := newClient(t, func(c *registry.Config) {
		c.Mirrors = map[string][]registry.Mirror{m.origin.Host(): {{
			Endpoint: m.mirror.Host(),
			Auth:     authn.FromConfig(authn.AuthConfig{Username: "mirror-user", Password: secret}),
		}}}
		c.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	got, err := readBlob(t, r.c, m.two.ref, m.two.layerD, int64(len(m.two.layer)))
	if err != nil || !bytes.Equal(got, m.two.layer) {
		t.Fatalf("Blob through a mirror that lacks it: %v", err)
	}
	log := buf.String()
	for _, want := range []string{"a mirror failed", "mirror=" + m.mirror.Host(), "reason=not_found", "level=INFO"} {
		if !strings.Contains(log, want) {
			t.Errorf("no %q in the log:\n%s", want, log)
		}
	}
	for _, secretPart := range []string{secret, "mirror-user", "Basic "} {
		if strings.Contains(log, secretPart) {
			t.Errorf("the log holds %q:\n%s", secretPart, log)
		}
	}
}
