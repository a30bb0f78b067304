package layerio_test

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/strata-oci/strata/materialize/internal/layerio"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

type closeCounter struct {
	io.Reader
	closed chan struct{}
}

func (c *closeCounter) Close() error { close(c.closed); return nil }

func TestReadahead(t *testing.T) {
	data := tartest.Content("ra", 1<<20+12345)
	boom := errors.New("boom")
	tests := []struct {
		desc         string
		src          io.Reader
		chunk, depth int
		want         []byte
		wantErr      error
	}{
		{desc: "whole stream, big chunks", src: bytes.NewReader(data), chunk: 256 << 10, depth: 4, want: data, wantErr: io.EOF},
		{desc: "whole stream, tiny chunks and one-byte source reads", src: iotest.OneByteReader(bytes.NewReader(data[:5000])), chunk: 7, depth: 1, want: data[:5000], wantErr: io.EOF},
		{desc: "empty stream", src: bytes.NewReader(nil), chunk: 16, depth: 2, want: nil, wantErr: io.EOF},
		{desc: "exact multiple of the chunk", src: bytes.NewReader(data[:4096]), chunk: 1024, depth: 2, want: data[:4096], wantErr: io.EOF},
		{desc: "error after data arrives after the data", src: io.MultiReader(bytes.NewReader(data[:3000]), iotest.ErrReader(boom)), chunk: 1024, depth: 2, want: data[:3000], wantErr: boom},
		{desc: "defaults", src: bytes.NewReader(data), want: data, wantErr: io.EOF},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			src := &closeCounter{Reader: tc.src, closed: make(chan struct{})}
			ra := layerio.Readahead(src, tc.chunk, tc.depth)
			var got bytes.Buffer
			buf := make([]byte, 1000)
			var err error
			for {
				var n int
				n, err = ra.Read(buf)
				got.Write(buf[:n])
				if err != nil {
					break
				}
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if !bytes.Equal(got.Bytes(), tc.want) {
				t.Fatalf("got %d bytes, want %d (equal prefix: %v)", got.Len(), len(tc.want), bytes.HasPrefix(tc.want, got.Bytes()))
			}
			if tc.wantErr == io.EOF {
				<-src.closed // at a clean end the goroutine closes the source
			}
			if err := ra.Close(); err != nil {
				t.Fatal(err)
			}
			ra.Close()
			<-src.closed // after an error, Close does (Settle may take it over first)
		})
	}
}

func TestReadaheadCloseEarly(t *testing.T) {
	// A source that never ends: Close must stop the goroutine, which then
	// closes the source, and later Reads fail instead of blocking.
	src := &closeCounter{Reader: zeros{}, closed: make(chan struct{})}
	ra := layerio.Readahead(src, 64, 2)
	if _, err := io.ReadFull(ra, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	ra.Close()
	<-src.closed
	var err error
	for err == nil {
		_, err = ra.Read(make([]byte, 64))
	}
	if !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("read after close: %v", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
