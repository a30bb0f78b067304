package layerio_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/klauspost/compress/zstd"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/internal/layerio"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

type fakeLayer struct {
	b         []byte
	digest    blob.Digest
	mediaType types.MediaType
}

func (l fakeLayer) Digest() blob.Digest             { return l.digest }
func (l fakeLayer) Authorize(context.Context) error { return nil }
func (l fakeLayer) MediaType() types.MediaType      { return l.mediaType }
func (l fakeLayer) Size() int64                     { return int64(len(l.b)) }
func (l fakeLayer) Open(context.Context) (io.ReadCloser, error) {
	return blob.NewVerifier(io.NopCloser(bytes.NewReader(l.b)), l.digest, int64(len(l.b)), nil), nil
}

func layerOf(b []byte, mt types.MediaType) fakeLayer {
	return fakeLayer{b: b, digest: blob.FromBytes(b), mediaType: mt}
}

func TestOpen(t *testing.T) {
	tarBytes := tartest.New().File("f", tartest.Content("f", 100_000)).Tar()
	gz := tartest.GzipBytes(tarBytes)
	zs := tartest.ZstdBytes(tarBytes)
	corrupt := layerOf(gz, types.OCILayer)
	corrupt.digest = blob.FromBytes([]byte("something else"))
	tests := []struct {
		desc    string
		l       fakeLayer
		lim     layerio.Limits
		wantErr error
		errText string
	}{
		{desc: "OCI gzip", l: layerOf(gz, types.OCILayer)},
		{desc: "Docker gzip", l: layerOf(gz, types.DockerLayer)},
		{desc: "OCI nondistributable gzip", l: layerOf(gz, types.OCIRestrictedLayer)},
		{desc: "OCI zstd", l: layerOf(zs, types.OCILayerZStd)},
		{desc: "OCI uncompressed", l: layerOf(tarBytes, types.OCIUncompressedLayer)},
		{desc: "Docker uncompressed", l: layerOf(tarBytes, types.DockerUncompressedLayer)},
		{desc: "limit exactly met", l: layerOf(gz, types.OCILayer), lim: layerio.Limits{MaxBytes: int64(len(tarBytes))}},
		{desc: "unknown media type", l: layerOf(gz, "application/vnd.oci.image.config.v1+json"), wantErr: manifest.ErrUnknownMediaType},
		{desc: "gzip over the limit", l: layerOf(gz, types.OCILayer), lim: layerio.Limits{MaxBytes: int64(len(tarBytes)) - 1}, wantErr: layerio.ErrLimitExceeded},
		{desc: "zstd over the limit", l: layerOf(zs, types.OCILayerZStd), lim: layerio.Limits{MaxBytes: 1000}, wantErr: layerio.ErrLimitExceeded},
		{desc: "tar over the limit", l: layerOf(tarBytes, types.OCIUncompressedLayer), lim: layerio.Limits{MaxBytes: 1000}, wantErr: layerio.ErrLimitExceeded},
		{desc: "gzip labelled zstd", l: layerOf(gz, types.OCILayerZStd), errText: "zstd"},
		{desc: "zstd labelled gzip", l: layerOf(zs, types.OCILayer), errText: "gzip"},
		{desc: "digest mismatch surfaces at EOF", l: corrupt, wantErr: blob.ErrMismatch},
		{desc: "trailing garbage after gzip", l: layerOf(append(append([]byte{}, gz...), "garbage"...), types.OCILayer), errText: "gzip"},
		{desc: "trailing garbage after zstd", l: layerOf(append(append([]byte{}, zs...), "garbage!"...), types.OCILayerZStd), errText: "zstd"},
		{desc: "truncated gzip", l: layerOf(gz[:len(gz)/2], types.OCILayer), errText: "unexpected EOF"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			got, err := readAll(tc.l, tc.lim)
			switch {
			case tc.wantErr == nil && tc.errText == "":
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				if !bytes.Equal(got, tarBytes) {
					t.Fatalf("got %d bytes, want the %d-byte tar", len(got), len(tarBytes))
				}
			case err == nil:
				t.Fatalf("no error, want %v %q", tc.wantErr, tc.errText)
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			case tc.errText != "" && !strings.Contains(err.Error(), tc.errText):
				t.Fatalf("err = %v, want it to mention %q", err, tc.errText)
			}
			if err != nil && !strings.Contains(err.Error(), string(tc.l.digest)) {
				t.Errorf("error %q does not name the layer digest", err)
			}
		})
	}
}

func readAll(l fakeLayer, lim layerio.Limits) ([]byte, error) {
	rc, err := layerio.Open(context.Background(), l, lim)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func TestZstdWindowLimit(t *testing.T) {
	// A frame that asks for a 64 MiB window is refused under an 8 MiB limit.
	data := tartest.Content("w", 1<<20)
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf, zstd.WithWindowSize(64<<20), zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(bytes.Repeat(data, 2))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	frame := buf.Bytes()
	rc, err := layerio.Decompress(bytes.NewReader(frame), manifest.Zstd, layerio.Limits{ZstdMaxWindow: 8 << 20})
	if err == nil {
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	if err == nil {
		t.Fatal("64 MiB window accepted under an 8 MiB limit")
	}
	if !strings.Contains(err.Error(), "window") {
		t.Fatalf("err = %v, want a window-size error", err)
	}
	// The same frame passes under the default limit.
	rc, err = layerio.Decompress(bytes.NewReader(frame), manifest.Zstd, layerio.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || len(got) != 2<<20 {
		t.Fatalf("default limit: %d bytes, err %v", len(got), err)
	}
}

func TestBombIsCutOff(t *testing.T) {
	// 256 MiB of zeros compress to a few hundred KiB; a 1 MiB limit stops
	// decompression long before the end.
	zw, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	bomb := zw.EncodeAll(make([]byte, 256<<20), nil)
	zw.Close()
	l := layerOf(bomb, types.OCILayerZStd)
	rc, err := layerio.Open(context.Background(), l, layerio.Limits{MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	n, err := io.Copy(io.Discard, rc)
	if !errors.Is(err, layerio.ErrLimitExceeded) {
		t.Fatalf("err = %v, want ErrLimitExceeded", err)
	}
	if n > 1<<20 {
		t.Fatalf("%d bytes passed a 1 MiB limit", n)
	}
}

func FuzzDecompress(f *testing.F) {
	tb := tartest.New().File("f", []byte("hello")).Tar()
	f.Add(tartest.GzipBytes(tb), uint8(1))
	f.Add(tartest.ZstdBytes(tb), uint8(2))
	f.Add(tb, uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, kind uint8) {
		c := manifest.Codec(kind % 3)
		const limit = 1 << 20
		rc, err := layerio.Decompress(bytes.NewReader(data), c, layerio.Limits{MaxBytes: limit, ZstdMaxWindow: 8 << 20})
		if err != nil {
			return
		}
		defer rc.Close()
		n, err := io.Copy(io.Discard, rc)
		if n > limit {
			t.Fatalf("%d bytes passed a %d-byte limit (err %v)", n, limit, err)
		}
		if c == manifest.None && err == nil && n != int64(len(data)) {
			t.Fatalf("uncompressed: %d bytes of %d", n, len(data))
		}
	})
}
