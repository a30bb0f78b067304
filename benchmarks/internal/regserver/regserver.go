// Package regserver starts the registry the benchmark harness pushes its
// images to: the real distribution registry (Debian's docker-registry) when
// it is installed, else go-containerregistry's in-process registry. Both
// listen on 127.0.0.1 only.
package regserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
)

// DistributionBinary is where Debian installs the distribution registry.
const DistributionBinary = "/usr/bin/docker-registry"

// Kinds of Server.
const (
	KindDistribution = "distribution (docker-registry)"
	KindInProcess    = "ggcr in-process (pkg/registry)"
)

// Server is a running registry. Close stops it.
type Server struct {
	// Host is "127.0.0.1:port".
	Host string
	// Kind says which registry it is.
	Kind  string
	close func() error
}

// Close stops the registry and removes its storage.
func (s *Server) Close() error { return s.close() }

// Start starts the distribution registry with its storage under dir when
// binary exists (binary "" means DistributionBinary), else the in-process
// one (its blobs on disk under dir).
func Start(ctx context.Context, dir, binary string) (*Server, error) {
	if binary == "" {
		binary = DistributionBinary
	}
	if _, err := os.Stat(binary); err == nil {
		return startDistribution(ctx, dir, binary)
	}
	return startInProcess(dir)
}

func startInProcess(dir string) (*Server, error) {
	blobs := filepath.Join(dir, "blobs")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return nil, err
	}
	h := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)), ggcrregistry.WithBlobHandler(ggcrregistry.NewDiskBlobHandler(blobs)))
	srv := httptest.NewUnstartedServer(h)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv.Listener = l
	srv.Start()
	return &Server{Host: l.Addr().String(), Kind: KindInProcess, close: func() error { srv.Close(); return nil }}, nil
}

func startDistribution(ctx context.Context, dir, binary string) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	host := fmt.Sprintf("127.0.0.1:%d", port)
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}
http: {addr: %s, secret: benchmark-only}
`, data, host)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(binary, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	// If the harness dies without stopping it, the registry goes too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("regserver: start %s: %w", binary, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); logf.Close() }()
	stop := func() error {
		cmd.Process.Kill()
		<-done
		return nil
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-done:
			out, _ := os.ReadFile(filepath.Join(dir, "registry.log"))
			return nil, fmt.Errorf("regserver: %s exited: %v: %s", binary, err, out)
		case <-ctx.Done():
			stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, errors.New("regserver: registry did not answer /v2/ within 15 s")
		}
	}
	return &Server{Host: host, Kind: KindDistribution, close: stop}, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
