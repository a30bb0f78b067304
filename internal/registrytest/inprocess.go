package registrytest

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
)

// InProcess starts go-containerregistry's in-process registry behind
// httptest on 127.0.0.1 and returns its "127.0.0.1:port" host. Each wrap, if
// given, wraps the registry's handler (outermost last), e.g. a
// Counter.Wrap. The server is closed in t.Cleanup.
func InProcess(t testing.TB, wrap ...func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	for _, w := range wrap {
		h = w(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}
