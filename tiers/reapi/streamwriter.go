package reapi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/google/uuid"
	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	bspb "google.golang.org/genproto/googleapis/bytestream"

	"github.com/strata-oci/strata/blob"
)

// errServerHasIt ends an upload early: the server closed the stream because
// it already holds the blob.
var errServerHasIt = errors.New("server already holds the blob")

// streamWriter sends one ByteStream Write in chunks of at most chunkSize.
// It implements io.Writer so a zstd encoder can write into it; it sends a
// full chunk only when a later byte arrives, so the last chunk is always
// held back for finish.
type streamWriter struct {
	stream   bspb.ByteStream_WriteClient
	wd       *watchdog
	stall    time.Duration // StallTimeout
	resource string
	first    bool
	offset   int64 // bytes sent so far
	buf      []byte
}

func (w *streamWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if len(w.buf) == chunkSize {
			if err := w.send(false); err != nil {
				return n, err
			}
		}
		k := copy(w.buf[len(w.buf):chunkSize], p)
		w.buf = w.buf[:len(w.buf)+k]
		p = p[k:]
		n += k
	}
	return n, nil
}

func (w *streamWriter) send(finish bool) error {
	req := &bspb.WriteRequest{WriteOffset: w.offset, Data: w.buf, FinishWrite: finish}
	if w.first {
		req.ResourceName = w.resource
		w.first = false
	}
	w.wd.arm(w.stall)
	err := w.stream.Send(req)
	w.wd.disarm()
	if err == io.EOF {
		// The server ended the stream: it already holds the blob, or failed;
		// CloseAndRecv says which.
		return errServerHasIt
	}
	if err != nil {
		return w.wd.check(err)
	}
	w.offset += int64(len(w.buf))
	w.buf = w.buf[:0]
	return nil
}

// putStream uploads src (a verifying reader over exactly d's bytes) with
// ByteStream Write, as compressed-blobs/zstd where the server takes it and
// the content compresses. It is not retried: the source cannot be read twice.
// kept reports that the server ended the upload early because it holds
// the blob already (its stored copy stays).
func (t *Tier) putStream(ctx context.Context, caps *serverCaps, d blob.Digest, size int64, src io.Reader) (kept bool, err error) {
	a, err := t.admit(ctx)
	if err != nil {
		return false, t.convert(ctx, "write", string(d), err)
	}
	// zstd only for content that compresses (see compressible).
	compress := caps.zstdStream
	if compress {
		br := bufio.NewReaderSize(src, 64<<10)
		head, _ := br.Peek(sniffLen) // a read error comes again from br
		compress, src = compressible(head), br
	}
	kept, err = t.writeStream(ctx, compress, d, size, src)
	if err == nil && caps.zstdStream {
		t.kinds.put(d.Encoded(), compress)
	}
	var me *blob.MismatchError
	switch {
	case errors.As(err, &me):
		t.done(ctx, a, nil) // the server did nothing wrong
		return false, fmt.Errorf("reapi %q: put %s: %w", t.cfg.Name, d, err)
	case err != nil:
		t.done(ctx, a, err)
		return false, t.convert(ctx, "write", string(d), err)
	}
	t.done(ctx, a, nil)
	return kept, nil
}

func (t *Tier) writeStream(ctx context.Context, compress bool, d blob.Digest, size int64, src io.Reader) (kept bool, err error) {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(context.Canceled) // aborts the upload unless it completed
	wd := newWatchdog(cancel)
	defer wd.stop()

	rd := toREAPI(d, size)
	w := &streamWriter{wd: wd, stall: t.cfg.StallTimeout, first: true, buf: make([]byte, 0, chunkSize),
		resource: writeResource(t.cfg.Instance, uuid.NewString(), rd, compress)}
	wd.arm(t.cfg.CallTimeout)
	stream, err := t.bs.Write(sctx)
	wd.disarm()
	if err != nil {
		return false, wd.check(err)
	}
	w.stream = stream

	var copyErr error
	if compress {
		enc := encoders.Get().(*zstd.Encoder)
		// The frame header carries the blob's size: a server decoding the
		// upload whole allocates once instead of growing its buffer (the
		// SDK fake took 16 s for a 578 MB image without it), and the
		// encoder refuses a source of any other length at Close.
		enc.ResetContentSize(w, size)
		_, copyErr = io.Copy(enc, src)
		if copyErr == nil {
			copyErr = enc.Close() // flushes the last frame into w
		}
		enc.Reset(nil)
		encoders.Put(enc)
	} else {
		_, copyErr = io.Copy(w, src)
	}
	if copyErr != nil && !errors.Is(copyErr, errServerHasIt) {
		// A source mismatch or read error (or a failed send): cancelling the
		// stream (deferred) aborts it before finish_write, so nothing is
		// committed.
		return false, copyErr
	}
	if copyErr == nil {
		// The source matched d and size: commit.
		if err := w.send(true); err != nil {
			if !errors.Is(err, errServerHasIt) {
				return false, err
			}
			copyErr = err
		}
	}
	wd.arm(t.cfg.CallTimeout) // the server may verify and persist the blob first
	resp, err := stream.CloseAndRecv()
	wd.disarm()
	if err != nil {
		if status.Code(err) == codes.AlreadyExists {
			return true, nil
		}
		return false, wd.check(err)
	}
	// The server closing the stream before finish_write means it holds
	// the blob already; so does committed_size -1 for a compressed upload.
	// (An uncompressed upload small enough to be sent whole before the
	// server's early answer is not told apart from a commit.)
	early := copyErr != nil
	switch cs := resp.GetCommittedSize(); {
	case compress && cs == -1:
		return true, nil
	case cs == size, compress && cs == w.offset:
		return early, nil
	case early:
		return false, fmt.Errorf("server ended the upload early having committed %d of %d bytes", cs, size)
	default:
		return false, fmt.Errorf("server committed %d bytes, want %d", cs, size)
	}
}
