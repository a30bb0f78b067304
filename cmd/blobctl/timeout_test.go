package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fetch and materialize give up at --timeout: a registry that answers the
// ping and then holds every other request open (no headers, which the
// client would wait a minute for, times its retries) cannot hold the
// command. The sanity deadline only keeps a regression from hanging.
func TestFetchTimeout(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	reg := strings.TrimPrefix(srv.URL, "http://")
	root := filepath.Join(t.TempDir(), "root")
	for _, args := range [][]string{
		{"fetch", reg + "/app:v1", "--timeout", "300ms"},
		{"materialize", reg + "/app:v1", "--format", "ext4", "--out", filepath.Join(t.TempDir(), "x.ext4"), "--timeout", "300ms"},
	} {
		t.Run(args[0], func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var out, errb bytes.Buffer
			code := run(ctx, append([]string{"--root", root, "--allow-cidr", "127.0.0.0/8"}, args...), strings.NewReader(""), &out, &errb)
			if ctx.Err() != nil {
				t.Fatalf("blobctl ran into the sanity deadline: exit %d, %s", code, errb.String())
			}
			if code == 0 || !strings.Contains(errb.String(), "gave up after --timeout 300ms") || !strings.Contains(errb.String(), "deadline exceeded") {
				t.Fatalf("exit %d, stderr %q: want a failure that names the --timeout", code, errb.String())
			}
		})
	}
}
