package reapi

import (
	"context"
	"io"
	"sync"

	"google.golang.org/grpc"

	bspb "google.golang.org/genproto/googleapis/bytestream"
)

// streamReader is the raw byte stream of one ByteStream Read. It holds at
// most one received message, in gRPC's receive buffers (see readChunk).
// Errors are converted (blob.ErrUnavailable for a broken or stalled
// stream) and sticky; cause keeps the unconverted error so a
// resumingReader can judge it. Not safe for concurrent Reads.
type streamReader struct {
	t       *Tier
	ctx     context.Context // the caller's: tells a cancelled caller from a failed server
	sctx    context.Context
	cancel  context.CancelCauseFunc
	stream  bspb.ByteStream_ReadClient
	wd      *watchdog
	subject string

	chunk     readChunk // of the last message received
	err       error
	cause     error // err before conversion (nil, io.EOF or the RPC error)
	closed    bool
	closeOnce sync.Once
}

// openRead starts a ByteStream Read of resource at offset (limit bytes at
// most; 0: to the end) and waits for its first message (at most CallTimeout), retrying (on UNAVAILABLE and
// RESOURCE_EXHAUSTED) until then. A missing blob is blob.ErrNotFound.
func (t *Tier) openRead(ctx context.Context, resource, subject string, offset, limit int64) (*streamReader, error) {
	var sr *streamReader
	err := t.retry(ctx, func(a attempt) error {
		sctx, cancel := context.WithCancelCause(ctx)
		r := &streamReader{t: t, ctx: ctx, sctx: sctx, cancel: cancel, subject: subject}
		r.wd = newWatchdog(cancel)
		err := r.start(&bspb.ReadRequest{ResourceName: resource, ReadOffset: offset, ReadLimit: limit}, a.opts)
		t.done(ctx, a, err)
		if err != nil {
			r.release()
			return err
		}
		sr = r
		return nil
	})
	if err != nil {
		return nil, t.convert(ctx, "read", subject, err)
	}
	return sr, nil
}

func (r *streamReader) start(req *bspb.ReadRequest, opts []grpc.CallOption) error {
	r.wd.arm(r.t.cfg.CallTimeout) // the server may fetch or compress the blob first
	defer r.wd.disarm()
	stream, err := r.t.bs.Read(r.sctx, req, append(opts[:len(opts):len(opts)], grpc.ForceCodecV2(chunkCodec{}))...)
	if err != nil {
		return r.wd.check(err)
	}
	r.stream = stream
	err = stream.RecvMsg(&r.chunk)
	if err == io.EOF {
		r.err, r.cause = io.EOF, io.EOF // an empty stream; the verifier judges it
		return nil
	}
	if err != nil {
		return r.wd.check(err)
	}
	return nil
}

func (r *streamReader) Read(p []byte) (int, error) {
	if r.closed {
		return 0, errReaderClosed
	}
	if r.err == nil {
		if err := r.ctx.Err(); err != nil {
			// gRPC may still hold received messages; a cancelled caller
			// gets no more of them.
			r.cause = err
			r.err = r.t.convert(r.ctx, "read", r.subject, err)
			r.chunk.release()
			return 0, r.err
		}
	}
	for r.chunk.n == 0 {
		if r.err != nil {
			return 0, r.err
		}
		r.wd.arm(r.t.cfg.StallTimeout)
		err := r.stream.RecvMsg(&r.chunk)
		r.wd.disarm()
		if err == io.EOF {
			r.err, r.cause = io.EOF, io.EOF
			return 0, io.EOF
		}
		if err != nil {
			err = r.wd.check(err)
			r.t.breaker.record(false, classify(r.ctx, err))
			r.cause = err
			r.err = r.t.convert(r.ctx, "read", r.subject, err)
			return 0, r.err
		}
	}
	return r.chunk.read(p), nil
}

// Close cancels the stream. It is safe to call more than once.
func (r *streamReader) Close() error {
	r.closed = true
	r.release()
	r.chunk.release()
	return nil
}

func (r *streamReader) release() {
	r.closeOnce.Do(func() {
		r.wd.stop()
		r.cancel(context.Canceled)
	})
}
