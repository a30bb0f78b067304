package reapi

import "bytes"

// sniffLen is how many leading bytes compressible looks at.
const sniffLen = 6

// minSwitch is the least a read must still have to come for switching it
// from identity to zstd to be worth a new stream.
const minSwitch = 64 << 10

// compressedMagic are the leading bytes of formats that zstd cannot shrink:
// the layer encodings of OCI images (gzip, zstd) and other common ones.
var compressedMagic = [][]byte{
	{0x1f, 0x8b},                     // gzip
	{0x28, 0xb5, 0x2f, 0xfd},         // zstd frame
	{0xfd, '7', 'z', 'X', 'Z', 0x00}, // xz
	{'B', 'Z', 'h'},                  // bzip2
	{0x04, 0x22, 0x4d, 0x18},         // lz4 frame
}

// compressible reports whether a blob starting with head is worth moving
// as zstd: false when head starts like already compressed content (a zstd
// skippable frame counts as zstd), true otherwise. The answer only picks
// the wire encoding; every byte is verified whatever it says, so a server
// that lies about a blob's first bytes can only make a read slower.
func compressible(head []byte) bool {
	for _, m := range compressedMagic {
		if bytes.HasPrefix(head, m) {
			return false
		}
	}
	if len(head) >= 4 && head[0]&0xf0 == 0x50 && bytes.Equal(head[1:4], []byte{0x2a, 0x4d, 0x18}) {
		return false // zstd skippable frame (zstd:chunked, seekable zstd)
	}
	return true
}

// readEncoding is how Open starts reading a blob.
type readEncoding int

const (
	readIdentity readEncoding = iota // identity, decided
	readZstd                         // compressed-blobs/zstd, decided
	readSniff                        // identity; decide from the first message
)

// readEncodingOf picks how to read d: identity when the server does not
// take zstd (or Compression is off); otherwise what the tier learnt of d's
// content (on Put, or from an earlier read); otherwise sniff.
func (t *Tier) readEncodingOf(caps *serverCaps, key string) readEncoding {
	if !caps.zstdStream {
		return readIdentity
	}
	c, known := t.kinds.get(key)
	switch {
	case !known:
		return readSniff
	case c:
		return readZstd
	}
	return readIdentity
}
