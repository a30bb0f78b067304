package reapi

import (
	"bytes"
	"errors"
	"testing"

	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// splitInto returns b as a BufferSlice of buffers of at most n bytes, as
// gRPC hands over a message received in several HTTP/2 frames.
func splitInto(b []byte, n int) mem.BufferSlice {
	var s mem.BufferSlice
	for len(b) > 0 {
		k := min(n, len(b))
		s = append(s, mem.SliceBuffer(bytes.Clone(b[:k])))
		b = b[k:]
	}
	return s
}

// chunkData parses wire (split into buffers of n bytes) as a readChunk and
// reads its data, peeking first.
func chunkData(t *testing.T, wire []byte, n int) ([]byte, error) {
	t.Helper()
	var c readChunk
	defer c.release()
	if err := c.parse(splitInto(wire, n)); err != nil {
		return nil, err
	}
	peeked := c.peek()
	var got []byte
	p := make([]byte, 7) // odd reads across buffer ends
	for c.n > 0 {
		k := c.read(p)
		if k == 0 {
			t.Fatal("read returned 0 bytes with data left")
		}
		got = append(got, p[:k]...)
	}
	if !bytes.Equal(peeked, got) && !(len(peeked) == 0 && len(got) == 0) {
		t.Fatalf("peek = %q, read %q", peeked, got)
	}
	return got, nil
}

func TestReadChunkParse(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 100)
	plain, _ := proto.Marshal(&bspb.ReadResponse{Data: data})
	field := func(b []byte, num protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(b, num, protowire.BytesType), v)
	}
	var unknown []byte
	unknown = protowire.AppendVarint(protowire.AppendTag(unknown, 3, protowire.VarintType), 300)
	unknown = protowire.AppendFixed32(protowire.AppendTag(unknown, 4, protowire.Fixed32Type), 7)
	unknown = protowire.AppendFixed64(protowire.AppendTag(unknown, 5, protowire.Fixed64Type), 9)
	unknown = field(unknown, 6, []byte("other"))
	valid := map[string][]byte{
		"data only":                 plain,
		"empty message":             nil,
		"unknown fields around":     append(append(bytes.Clone(unknown), plain...), unknown...),
		"data twice: the last wins": field(field(nil, dataField, []byte("first")), dataField, data),
		"empty data":                field(nil, dataField, nil),
	}
	for desc, wire := range valid {
		var want bspb.ReadResponse
		if err := proto.Unmarshal(wire, &want); err != nil {
			t.Fatalf("%s: proto.Unmarshal: %v", desc, err)
		}
		for _, n := range []int{1, 3, 16 << 10, len(wire) + 1} {
			got, err := chunkData(t, wire, n)
			if err != nil || !bytes.Equal(got, want.Data) {
				t.Errorf("%s (buffers of %d bytes): %d bytes, %v; want %d bytes as proto.Unmarshal", desc, n, len(got), err, len(want.Data))
			}
		}
	}
	malformed := map[string][]byte{
		"truncated data":        plain[:len(plain)-1],
		"truncated length":      protowire.AppendTag(nil, dataField, protowire.BytesType),
		"truncated tag":         {0x80},
		"field number 0":        {0x02, 0x00},
		"group (wire type 3)":   protowire.AppendTag(nil, 7, protowire.StartGroupType),
		"truncated fixed64":     protowire.AppendTag(nil, 5, protowire.Fixed64Type),
		"length beyond the end": append(protowire.AppendVarint(protowire.AppendTag(nil, dataField, protowire.BytesType), 1<<40), 'x'),
	}
	for desc, wire := range malformed {
		if _, err := chunkData(t, wire, 2); !errors.Is(err, errMalformedResponse) {
			t.Errorf("%s: %v; want errMalformedResponse", desc, err)
		}
	}
}

// FuzzReadChunkParse: whatever the bytes, parse does not panic, and what it
// accepts protobuf accepts too, with the same data.
func FuzzReadChunkParse(f *testing.F) {
	plain, _ := proto.Marshal(&bspb.ReadResponse{Data: []byte("hello")})
	f.Add(plain, 3)
	f.Add([]byte{0x80}, 1)
	f.Add(append(protowire.AppendVarint(nil, 1<<35), plain...), 2)
	f.Fuzz(func(t *testing.T, wire []byte, n int) {
		n = max(1, n%64+1)
		got, err := chunkData(t, wire, n)
		if err != nil {
			return
		}
		var want bspb.ReadResponse
		if perr := proto.Unmarshal(wire, &want); perr != nil {
			t.Fatalf("parse accepted what protobuf refuses (%v)", perr)
		}
		if !bytes.Equal(got, want.Data) {
			t.Fatalf("data %q, protobuf's %q", got, want.Data)
		}
	})
}
