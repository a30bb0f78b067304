package main

import (
	"bytes"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/strata-oci/strata/internal/registrytest"
)

// stallLayer wraps a registry so that a GET of the blob named by *digest
// sends half of the body and then holds the connection until the client
// goes away; each such request is announced on reached.
func stallLayer(digest *atomic.Value, reached chan<- struct{}) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			d, _ := digest.Load().(string)
			if r.Method != http.MethodGet || d == "" || !strings.HasSuffix(r.URL.Path, "/blobs/"+d) {
				h.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			body := rec.Body.Bytes()
			_, _ = w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
			select {
			case reached <- struct{}{}:
			default:
			}
			<-r.Context().Done()
		})
	}
}

// leftovers lists the regular files under dirs whose names mark them as
// temporary (the converter's convert-*, download-*, the disk tier's
// staging files stage-* that conversions write into, and --out's
// .NAME.tmp-*).
func leftovers(t *testing.T, dirs ...string) []string {
	t.Helper()
	var out []string
	for _, dir := range dirs {
		_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			base := d.Name()
			if strings.Contains(base, ".tmp") || strings.HasPrefix(base, "convert-") || strings.HasPrefix(base, "download-") || strings.HasPrefix(base, "stage-") || strings.Contains(filepath.Dir(p), filepath.Join("ext4", "tmp")) {
				out = append(out, p)
			}
			return nil
		})
	}
	return out
}

// TestInterruptCleansUp: SIGINT or SIGTERM during an ext4 conversion
// cancels it, removes its temporary files (the converter's, which run on a
// context of their own, and --out's) and exits 130 or 143 with
// "interrupted".
func TestInterruptCleansUp(t *testing.T) {
	var digest atomic.Value
	reached := make(chan struct{}, 1)
	reg := registrytest.InProcess(t, stallLayer(&digest, reached))
	f := newFixtureAt(t, reg, 256<<10, 1)
	digests, _ := f.layers(t)
	digest.Store(digests[0])
	bin := buildBinary(t)

	for _, tc := range []struct {
		sig  syscall.Signal
		code int
	}{
		{syscall.SIGINT, 130},
		{syscall.SIGTERM, 143},
	} {
		t.Run(tc.sig.String(), func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "root")
			outDir := t.TempDir()
			cmd := exec.Command(bin, "--root", root, "--allow-cidr", "127.0.0.0/8", "materialize", f.ref, "--format", "ext4", "--out", filepath.Join(outDir, "img.ext4"))
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			select {
			case <-reached:
			case <-time.After(time.Minute): // a sanity bound against a hang, not a speed check
				t.Fatalf("the conversion never read the layer; stderr: %s", stderr.String())
			}
			// The conversion is under way: its temp file exists.
			if tmp := leftovers(t, root); len(tmp) == 0 {
				t.Fatalf("no conversion temp file while the layer is being read")
			}
			if err := cmd.Process.Signal(tc.sig); err != nil {
				t.Fatal(err)
			}
			_ = cmd.Wait()
			if code := cmd.ProcessState.ExitCode(); code != tc.code || !strings.Contains(stderr.String(), "blobctl: interrupted") {
				t.Errorf("exit %d, stderr %q; want %d and \"interrupted\"", code, stderr.String(), tc.code)
			}
			if tmp := leftovers(t, root, outDir); len(tmp) != 0 {
				t.Errorf("temporary files left behind: %v", tmp)
			}
			if es, _ := os.ReadDir(outDir); len(es) != 0 {
				t.Errorf("--out directory holds %d entries after the interrupt", len(es))
			}
		})
	}
}
