package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/registry"
)

// The admin endpoint is HTTP/1.1 over a unix socket (Root/admin.sock, mode
// 0600, in the 0700 root). Only the socket owner's uid and root may use it:
// the server checks each connection's peer credentials (SO_PEERCRED).
//
//	GET  /v1/ping                      -> {"root": ..., "pid": ...}
//	GET  /v1/blobs?tier=T              -> []BlobRecord
//	GET  /v1/blobs/{digest}            -> []BlobRecord (Stat)
//	GET  /v1/blobs/{digest}/content    -> the bytes; a failure after the first
//	                                      byte is sent in the Strata-Error trailer
//	GET  /v1/refs?tier=T&namespace=N   -> []RefRecord
//	GET  /v1/usage                     -> []UsageRecord
//	POST /v1/evict    EvictRequest     -> []EvictRecord
//	POST /v1/verify   VerifyRequest    -> []VerifyRecord
//	POST /v1/gc                        -> GCResult
//	GET  /v1/mounts                    -> []MountRecord
//	POST /v1/mounts/release releaseMountRequest -> MountRecord
//	POST /v1/warm     warmRequest      -> FetchResult (fetch and read every layer);
//	                                      with "Accept: application/x-ndjson", a
//	                                      stream of warm events, the result last
//	                                      (see warmEvent)
//	GET  /metrics                      -> Prometheus text exposition
//
// Errors are {"error": message, "kind": kind} with kind one of the errKind
// values, mapped back to the same sentinels by the Client.

// Server is the admin endpoint of a host this process holds.
type Server struct {
	srv  *http.Server
	path string
	done chan struct{}
}

type connKey struct{}

// Serve serves l's operations (the admin endpoint) on the unix socket at
// path until Close. The caller holds the disk root's lock, so an
// existing socket at path is a stale one from a process that died.
func Serve(path string, l *Local) (*Server, error) {
	if len(path) >= 108 {
		return nil, fmt.Errorf("socket path %s is too long for a unix socket (%d bytes, at most 107): use a shorter root", path, len(path))
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket; remove it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	// Bind in a private directory, set the mode, then move it into place,
	// so the socket is never reachable with looser permissions.
	dir, err := os.MkdirTemp(filepath.Dir(path), ".admin-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, err
	}
	a := &Server{path: path, done: make(chan struct{})}
	a.srv = &http.Server{
		Handler:           a.handler(l),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
	go func() {
		defer close(a.done)
		_ = a.srv.Serve(ln)
	}()
	return a, nil
}

// Close stops serving, waits for requests in flight (at most 10 s) and
// removes the socket.
func (a *Server) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.srv.Shutdown(ctx); err != nil {
		_ = a.srv.Close()
	}
	<-a.done
	_ = os.Remove(a.path)
}

// peerAllowed reports whether the connection's peer runs as this process's
// uid or as root.
func peerAllowed(c net.Conn) bool {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return false
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return false
	}
	return cred.Uid == 0 || int(cred.Uid) == os.Getuid()
}

func (a *Server) handler(l *Local) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ping", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"root": l.Root(), "pid": os.Getpid()})
	})
	mux.HandleFunc("GET /v1/blobs", func(w http.ResponseWriter, r *http.Request) {
		reply(w)(unpack(l.Blobs(r.Context(), r.URL.Query().Get("tier"))))
	})
	mux.HandleFunc("GET /v1/blobs/{digest}", func(w http.ResponseWriter, r *http.Request) {
		reply(w)(unpack(l.Stat(r.Context(), blob.Digest(r.PathValue("digest")))))
	})
	mux.HandleFunc("GET /v1/blobs/{digest}/content", func(w http.ResponseWriter, r *http.Request) {
		d := blob.Digest(r.PathValue("digest"))
		if err := blob.ValidateDigest(d); err != nil {
			writeError(w, err)
			return
		}
		rc, info, err := l.p.Stack.Open(r.Context(), d)
		if err != nil {
			writeError(w, err)
			return
		}
		defer rc.Close()
		w.Header().Set("Trailer", "Strata-Error, Strata-Error-Kind")
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Strata-Size", strconv.FormatInt(info.Size, 10))
		w.WriteHeader(http.StatusOK)
		if _, err := blob.Copy(w, rc, d, info.Size); err != nil {
			w.Header().Set("Strata-Error", err.Error())
			w.Header().Set("Strata-Error-Kind", errKind(err))
		}
	})
	mux.HandleFunc("GET /v1/refs", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		reply(w)(unpack(l.Refs(r.Context(), q.Get("tier"), q.Get("namespace"))))
	})
	mux.HandleFunc("GET /v1/usage", func(w http.ResponseWriter, r *http.Request) {
		reply(w)(unpack(l.Usage(r.Context())))
	})
	mux.HandleFunc("POST /v1/evict", func(w http.ResponseWriter, r *http.Request) {
		var req EvictRequest
		if !readJSON(w, r, &req) {
			return
		}
		reply(w)(unpack(l.Evict(r.Context(), req)))
	})
	mux.HandleFunc("POST /v1/verify", func(w http.ResponseWriter, r *http.Request) {
		var req VerifyRequest
		if !readJSON(w, r, &req) {
			return
		}
		reply(w)(unpack(l.Verify(r.Context(), req)))
	})
	mux.HandleFunc("POST /v1/warm", func(w http.ResponseWriter, r *http.Request) {
		var req warmRequest
		if !readJSON(w, r, &req) {
			return
		}
		cred, err := req.credential()
		if err != nil {
			writeError(w, err)
			return
		}
		if wantsWarmEvents(r) {
			serveWarmEvents(w, r, l, req, cred)
			return
		}
		reply(w)(unpack(l.Warm(r.Context(), req.Image, cred, req.Parallel, nil)))
	})
	mux.HandleFunc("POST /v1/gc", func(w http.ResponseWriter, r *http.Request) {
		reply(w)(unpack(l.GC(r.Context())))
	})
	mux.HandleFunc("GET /v1/mounts", func(w http.ResponseWriter, r *http.Request) {
		reply(w)(unpack(l.Mounts(r.Context())))
	})
	mux.HandleFunc("POST /v1/mounts/release", func(w http.ResponseWriter, r *http.Request) {
		var req releaseMountRequest
		if !readJSON(w, r, &req) {
			return
		}
		reply(w)(unpack(l.ReleaseMount(r.Context(), req.Dir)))
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		if err := l.Metrics(r.Context(), w); err != nil {
			writeError(w, err)
		}
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := r.Context().Value(connKey{}).(net.Conn)
		if c == nil || !peerAllowed(c) {
			http.Error(w, "forbidden: the admin endpoint serves only its owner", http.StatusForbidden)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// releaseMountRequest is the body of POST /v1/mounts/release.
type releaseMountRequest struct {
	Dir string `json:"dir"`
}

// reply writes v, or err as an error body (with the partial records, if any,
// dropped: an operation that failed reports its failure).
func reply(w http.ResponseWriter) func(v any, err error) {
	return func(v any, err error) {
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, v)
	}
}

func unpack[T any](v T, err error) (any, error) { return v, err }

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, fmt.Errorf("%w: %v", ErrInvalidRequest, err))
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

type errorBody struct {
	Error string `json:"error"`
	Kind  string `json:"kind"`
}

// Error kinds on the wire, each standing for one sentinel.
var errKinds = []struct {
	kind   string
	err    error
	status int
}{
	{"mismatch", blob.ErrMismatch, http.StatusUnprocessableEntity},
	{"invalid_digest", blob.ErrInvalidDigest, http.StatusBadRequest},
	{"invalid_ref", blob.ErrInvalidRef, http.StatusBadRequest},
	{"invalid_reference", registry.ErrInvalidReference, http.StatusBadRequest},
	{"invalid_request", ErrInvalidRequest, http.StatusBadRequest},
	{"denied", registry.ErrDenied, http.StatusForbidden},
	{"unsupported", blob.ErrUnsupported, http.StatusNotImplemented},
	{"not_found", blob.ErrNotFound, http.StatusNotFound},
	{"unavailable", blob.ErrUnavailable, http.StatusServiceUnavailable},
	{"canceled", context.Canceled, 499},
}

func errKind(err error) string {
	for _, k := range errKinds {
		if errors.Is(err, k.err) {
			return k.kind
		}
	}
	return "internal"
}

func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	kind := errKind(err)
	for _, k := range errKinds {
		if k.kind == kind {
			status = k.status
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(errorBody{Error: err.Error(), Kind: kind})
}

// remoteError is an error the holder of the root reported. It matches the
// sentinel of its kind under errors.Is.
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

func fromWire(msg, kind string) error {
	for _, k := range errKinds {
		if k.kind == kind {
			return &remoteError{msg: msg, kind: k.err}
		}
	}
	return &remoteError{msg: msg}
}
