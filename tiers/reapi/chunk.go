package reapi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"

	bspb "google.golang.org/genproto/googleapis/bytestream"
)

// chunkCodec is the proto codec of ByteStream Reads whose responses are
// received as readChunks: a response's data field is read from gRPC's
// receive buffers as the caller reads it, instead of being copied into a
// bytestream.ReadResponse first (protobuf's copy and the clearing of the
// pooled buffer it is materialized into were a third of the CPU of a cache
// hit from the REAPI tier). The request, and any other message, goes
// through the proto codec.
type chunkCodec struct{}

var protoCodec = sync.OnceValue(func() encoding.CodecV2 { return encoding.GetCodecV2(proto.Name) })

func (chunkCodec) Name() string { return proto.Name }

func (chunkCodec) Marshal(v any) (mem.BufferSlice, error) { return protoCodec().Marshal(v) }

func (chunkCodec) Unmarshal(data mem.BufferSlice, v any) error {
	c, ok := v.(*readChunk)
	if !ok {
		return protoCodec().Unmarshal(data, v)
	}
	return c.parse(data)
}

// readChunk is the data field of one ByteStream ReadResponse, left in the
// message's receive buffers (a reference held until the data is read or
// release is called).
type readChunk struct {
	r *mem.Reader // at the data's next byte; nil when none is left
	n int         // data bytes left
}

// dataField is the number of ReadResponse's data field (10).
var dataField = (&bspb.ReadResponse{}).ProtoReflect().Descriptor().Fields().ByName("data").Number()

// errMalformedResponse: a ReadResponse that is not valid protobuf.
var errMalformedResponse = errors.New("malformed ByteStream ReadResponse")

// parse takes the data field of the ReadResponse in data (its last
// occurrence, as protobuf does; other fields are skipped).
func (c *readChunk) parse(data mem.BufferSlice) error {
	c.release()
	total := data.Len()
	scan := data.Reader()
	defer scan.Close()
	start, n := -1, 0
	for scan.Remaining() > 0 {
		tag, err := binary.ReadUvarint(scan)
		if err != nil {
			return fmt.Errorf("%w: tag: %v", errMalformedResponse, err)
		}
		if tag>>3 < uint64(protowire.MinValidNumber) || tag>>3 > uint64(protowire.MaxValidNumber) {
			return fmt.Errorf("%w: field number %d", errMalformedResponse, tag>>3)
		}
		num, typ := protowire.Number(tag>>3), protowire.Type(tag&7)
		skip := 0
		switch typ {
		case protowire.VarintType:
			if _, err := binary.ReadUvarint(scan); err != nil {
				return fmt.Errorf("%w: field %d: %v", errMalformedResponse, num, err)
			}
		case protowire.Fixed32Type:
			skip = 4
		case protowire.Fixed64Type:
			skip = 8
		case protowire.BytesType:
			l, err := binary.ReadUvarint(scan)
			if err != nil {
				return fmt.Errorf("%w: field %d: %v", errMalformedResponse, num, err)
			}
			if l > uint64(scan.Remaining()) {
				return fmt.Errorf("%w: field %d of %d bytes, %d left", errMalformedResponse, num, l, scan.Remaining())
			}
			skip = int(l)
			if num == dataField {
				start, n = total-scan.Remaining(), skip
			}
		default:
			return fmt.Errorf("%w: field %d of wire type %d", errMalformedResponse, num, typ)
		}
		if skip > scan.Remaining() {
			return fmt.Errorf("%w: field %d truncated", errMalformedResponse, num)
		}
		if _, err := scan.Discard(skip); err != nil {
			return fmt.Errorf("%w: %v", errMalformedResponse, err)
		}
	}
	if n == 0 {
		return nil
	}
	r := data.Reader()
	if _, err := r.Discard(start); err != nil {
		r.Close()
		return fmt.Errorf("%w: %v", errMalformedResponse, err)
	}
	c.r, c.n = r, n
	return nil
}

// peek returns a copy of the data bytes left, without consuming them.
func (c *readChunk) peek() []byte {
	if c.n == 0 {
		return nil
	}
	views, _ := c.r.Peek(c.n, nil) // n bytes are there: parse checked
	b := make([]byte, 0, c.n)
	for _, v := range views {
		b = append(b, v...)
	}
	return b
}

// read copies the next data bytes into p.
func (c *readChunk) read(p []byte) int {
	if len(p) > c.n {
		p = p[:c.n]
	}
	k, _ := c.r.Read(p)
	c.n -= k
	if c.n == 0 {
		c.release()
	}
	return k
}

// release gives back the message's buffers.
func (c *readChunk) release() {
	if c.r != nil {
		c.r.Close()
		c.r = nil
	}
	c.n = 0
}
