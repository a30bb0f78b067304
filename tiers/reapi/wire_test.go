package reapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"

	"github.com/strata-oci/strata/blob"
)

// countingConn counts the bytes a client connection moves, both ways.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func countingDialer(n *atomic.Int64) grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return countingConn{Conn: c, n: n}, nil
	})
}

// compressibleBlob returns n bytes of log-like text: words from a small
// vocabulary and random numbers, compressible but not trivially so.
func compressibleBlob(n int) []byte {
	r := rand.New(rand.NewPCG(42, 42))
	words := []string{"GET", "PUT", "/v2/library/alpine/blobs/", "sha256:", "200", "404", "layer", "manifest",
		"executor", "fetch", "cache", "hit", "miss", "bytes", "ms", "INFO", "WARN", "tier=reapi", "tier=disk", "digest="}
	var b bytes.Buffer
	b.Grow(n + 64)
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
		b.WriteByte(' ')
		b.WriteString(strconv.Itoa(r.IntN(100000)))
		if r.IntN(8) == 0 {
			b.WriteByte('\n')
		} else {
			b.WriteByte(' ')
		}
	}
	return b.Bytes()[:n]
}

// TestWireCompression: a 64 MiB compressible blob moves far fewer bytes
// with zstd compressed-blobs than without, for Put and Open together.
func TestWireCompression(t *testing.T) {
	data := compressibleBlob(64 << 20)
	d := blob.FromBytes(data)
	measure := func(zstd bool) int64 {
		var n atomic.Int64
		f := startFake(t, fakeOptions{zstd: zstd})
		tier := newTier(t, f, func(c *Config) { c.DialOptions = []grpc.DialOption{countingDialer(&n)} })
		if err := tier.Put(context.Background(), d, int64(len(data)), bytes.NewReader(data)); err != nil {
			t.Fatalf("Put: %v", err)
		}
		tier.forget(d) // Open must go to the server
		rc, info, err := tier.Open(context.Background(), d)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		h := sha256.New()
		if _, err := io.Copy(h, rc); err != nil {
			t.Fatalf("read: %v", err)
		}
		rc.Close()
		if got := blob.NewDigestFromHash(h); got != d || info.Size != int64(len(data)) {
			t.Fatalf("read back %s (%d bytes), want %s", got, info.Size, d)
		}
		f.stop()
		return n.Load()
	}
	plain := measure(false)
	compressed := measure(true)
	ratio := float64(compressed) / float64(plain)
	t.Logf("64 MiB compressible blob, Put+Open on the wire: identity %d bytes, zstd %d bytes, ratio %.3f", plain, compressed, ratio)
	if plain < 2*int64(len(data)) {
		t.Fatalf("identity moved %d bytes, less than the blob twice: the counter misses traffic", plain)
	}
	if ratio >= 0.5 {
		t.Fatalf("zstd moved %.0f%% of the identity bytes, want < 50%%", 100*ratio)
	}
}
