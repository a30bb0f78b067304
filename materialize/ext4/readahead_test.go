package ext4

import (
	"bytes"
	"context"
	"errors"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/strata-oci/strata/materialize/internal/tartest"
)

func TestReadaheadPassesBytesAndErrors(t *testing.T) {
	data := tartest.Content("ra", 5*readaheadChunk+123)
	tests := []struct {
		desc    string
		open    func(context.Context) (io.ReadCloser, error)
		want    []byte
		wantErr error
	}{
		{
			desc: "whole stream",
			open: func(context.Context) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
			want: data,
		},
		{
			desc: "empty stream",
			open: func(context.Context) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(nil)), nil },
			want: []byte{},
		},
		{
			desc:    "open fails",
			open:    func(context.Context) (io.ReadCloser, error) { return nil, errInjected },
			want:    []byte{},
			wantErr: errInjected,
		},
		{
			desc: "read fails after some chunks",
			open: func(context.Context) (io.ReadCloser, error) {
				return io.NopCloser(io.MultiReader(bytes.NewReader(data[:2*readaheadChunk+7]), failReader{})), nil
			},
			want:    data[:2*readaheadChunk+7],
			wantErr: errInjected,
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			r := startReadahead(context.Background(), tc.open)
			defer r.Close()
			got, err := io.ReadAll(r)
			if !errors.Is(err, tc.wantErr) && !(tc.wantErr == nil && err == nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("got %d bytes, want %d", len(got), len(tc.want))
			}
		})
	}
}

// Close of a readahead whose consumer stopped early ends the producer and
// closes the stream.
func TestReadaheadCloseStopsProducer(t *testing.T) {
	before := runtime.NumGoroutine()
	closed := make(chan struct{})
	r := startReadahead(context.Background(), func(context.Context) (io.ReadCloser, error) {
		return &closeNotifier{Reader: zeroReader{}, closed: closed}, nil
	})
	buf := make([]byte, 10)
	if _, err := io.ReadFull(r, buf); err != nil {
		t.Fatal(err)
	}
	r.Close()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("stream not closed after Close")
	}
	for i := 0; runtime.NumGoroutine() > before && i < 100; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after Close, %d before", n, before)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

type closeNotifier struct {
	io.Reader
	closed chan struct{}
}

func (c *closeNotifier) Close() error { close(c.closed); return nil }
