package layerio_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/safego"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/internal/layerio"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// sizedLayer is a layer that declares size for its blob b (a manifest may
// lie), and whose Open verifies against that size as the fetcher's does.
type sizedLayer struct {
	b         []byte
	size      int64
	mediaType types.MediaType
}

func (l sizedLayer) Digest() blob.Digest             { return blob.FromBytes(l.b) }
func (l sizedLayer) Authorize(context.Context) error { return nil }
func (l sizedLayer) MediaType() types.MediaType      { return l.mediaType }
func (l sizedLayer) Size() int64                     { return l.size }
func (l sizedLayer) Open(context.Context) (io.ReadCloser, error) {
	return blob.NewVerifier(io.NopCloser(bytes.NewReader(l.b)), l.Digest(), l.size, nil), nil
}

// readThrough opens l with lim, reads it through Readahead (as the
// materializers do) in reads of chunk bytes, and returns what it yields.
func readThrough(l sizedLayer, lim layerio.Limits, chunk int) ([]byte, error) {
	rc, err := layerio.Open(context.Background(), l, lim)
	if err != nil {
		return nil, err
	}
	ra := layerio.Readahead(rc, chunk, 2)
	defer ra.Close()
	var out []byte
	buf := make([]byte, chunk)
	for {
		n, err := ra.Read(buf)
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

// TestExtremeDeclaredSizes: a layer whose declared size is wrong, however
// extreme, fails with a mismatch naming the layer, for every compression;
// none panics (the size reaches a blob.Verifier under the decompressor).
func TestExtremeDeclaredSizes(t *testing.T) {
	tarBytes := tartest.New().File("f", tartest.Content("f", 70_000)).Tar()
	blobs := map[string]struct {
		b  []byte
		mt types.MediaType
	}{
		"gzip":         {tartest.GzipBytes(tarBytes), types.OCILayer},
		"zstd":         {tartest.ZstdBytes(tarBytes), types.OCILayerZStd},
		"uncompressed": {tarBytes, types.OCIUncompressedLayer},
	}
	tests := []struct {
		desc string
		size func(n int64) int64
		ok   bool
	}{
		{desc: "MaxInt64", size: func(int64) int64 { return math.MaxInt64 }},
		{desc: "MaxInt64-1", size: func(int64) int64 { return math.MaxInt64 - 1 }},
		{desc: "1 TiB", size: func(int64) int64 { return 1 << 40 }},
		{desc: "zero", size: func(int64) int64 { return 0 }},
		{desc: "one short", size: func(n int64) int64 { return n - 1 }},
		{desc: "one long", size: func(n int64) int64 { return n + 1 }},
		{desc: "exact", size: func(n int64) int64 { return n }, ok: true},
		{desc: "unknown (-1)", size: func(int64) int64 { return -1 }, ok: true},
	}
	for name, bl := range blobs {
		for _, tc := range tests {
			l := sizedLayer{b: bl.b, size: tc.size(int64(len(bl.b))), mediaType: bl.mt}
			for _, chunk := range []int{1000, 256 << 10} {
				got, err := readThrough(l, layerio.Limits{}, chunk)
				if tc.ok {
					if err != nil || !bytes.Equal(got, tarBytes) {
						t.Errorf("%s, %s: %d bytes, %v; want the tar", name, tc.desc, len(got), err)
					}
					continue
				}
				if !errors.Is(err, blob.ErrMismatch) {
					t.Errorf("%s, %s, %d-byte chunks: err %v; want a mismatch", name, tc.desc, chunk, err)
				}
				if errors.Is(err, safego.ErrPanic) {
					t.Errorf("%s, %s: a panic was recovered: %v", name, tc.desc, err)
				}
			}
		}
	}
}

// TestExtremeLimits: a decompression limit at the top of the int64 range
// (or none) lets a layer through whole; 0 is the default limit.
func TestExtremeLimits(t *testing.T) {
	tarBytes := tartest.New().File("f", tartest.Content("lim", 50_000)).Tar()
	for _, max := range []int64{math.MaxInt64, math.MaxInt64 - 1, math.MaxInt64 / 2, -1, math.MinInt64, 0} {
		for _, c := range []manifest.Codec{manifest.None, manifest.Gzip, manifest.Zstd} {
			var b []byte
			switch c {
			case manifest.None:
				b = tarBytes
			case manifest.Gzip:
				b = tartest.GzipBytes(tarBytes)
			case manifest.Zstd:
				b = tartest.ZstdBytes(tarBytes)
			}
			rc, err := layerio.Decompress(bytes.NewReader(b), c, layerio.Limits{MaxBytes: max})
			if err != nil {
				t.Fatalf("%v, limit %d: %v", c, max, err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || !bytes.Equal(got, tarBytes) {
				t.Errorf("%v, limit %d: %d bytes, %v; want the whole tar", c, max, len(got), err)
			}
		}
	}
}

type panicky struct{ after int }

func (p *panicky) Read(b []byte) (int, error) {
	if p.after <= 0 {
		var s []byte
		_ = s[:len(b)-len(b)-1] // the kind of bug a wrapped size causes
	}
	n := min(len(b), p.after)
	clear(b[:n])
	p.after -= n
	return n, nil
}

func (p *panicky) Close() error { return nil }

// TestReadaheadRecoversAPanic: a panic on the read-ahead goroutine (in a
// decompressor, a verifier) reaches the consumer as an error wrapping
// safego.ErrPanic after the bytes read before it, instead of ending the
// process.
func TestReadaheadRecoversAPanic(t *testing.T) {
	ra := layerio.Readahead(&panicky{after: 3000}, 1000, 2)
	defer ra.Close()
	n, err := io.Copy(io.Discard, ra)
	if !errors.Is(err, safego.ErrPanic) || n != 3000 {
		t.Fatalf("copied %d bytes, err %v; want 3000 bytes then an ErrPanic error", n, err)
	}
}

// FuzzLayerSizes reads a layer blob through Open and Readahead with an
// arbitrary declared size (extreme ones seeded) and an arbitrary
// decompression limit. It must never panic; it may succeed only when the
// declared size is right (or unknown); and it never yields more than the
// limit.
func FuzzLayerSizes(f *testing.F) {
	tb := tartest.New().File("f", []byte("hello")).Tar()
	seeds := [][]byte{tb, tartest.GzipBytes(tb), tartest.ZstdBytes(tb)}
	for kind, b := range seeds {
		for _, size := range []int64{int64(len(b)), 0, -1, math.MaxInt64, math.MaxInt64 - 1, math.MinInt64, 1 << 40} {
			for _, max := range []int64{0, -1, math.MaxInt64, math.MaxInt64 - 1, 10, int64(len(tb))} {
				f.Add(b, uint8(kind), size, max)
			}
		}
	}
	mts := []types.MediaType{types.OCIUncompressedLayer, types.OCILayer, types.OCILayerZStd}
	f.Fuzz(func(t *testing.T, data []byte, kind uint8, size, max int64) {
		l := sizedLayer{b: data, size: size, mediaType: mts[int(kind)%len(mts)]}
		got, err := readThrough(l, layerio.Limits{MaxBytes: max, ZstdMaxWindow: 8 << 20}, 4096)
		if errors.Is(err, safego.ErrPanic) {
			t.Fatalf("panic: %v", err)
		}
		limit := max
		if limit == 0 {
			limit = layerio.DefaultMaxBytes
		}
		if limit >= 0 && int64(len(got)) > limit {
			t.Fatalf("%d bytes passed a %d-byte limit (err %v)", len(got), limit, err)
		}
		if err == nil && size >= 0 && size != int64(len(data)) {
			t.Fatalf("a %d-byte blob declared %d bytes was accepted", len(data), size)
		}
	})
}
