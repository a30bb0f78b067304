package reapi

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"strconv"
	"strings"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"github.com/strata-oci/strata/blob"
)

// Wire names. docs/reapi.md documents every one of them; changing any is a
// format change that needs a new version tag.
const (
	// refProgram and sizeProgram are arguments[0] of the Commands that key
	// refs and the size index.
	refProgram  = "strata-ref/v1"
	sizeProgram = "strata-size/v1"
	// blobOutput is the output file that references a ref's (or the size
	// index entry's) blob; metaOutput references the ref's metadata.
	blobOutput = "blob"
	metaOutput = "strata-ref.json"
	// worker is ExecutedActionMetadata.worker on entries Strata writes.
	worker = "strata"
)

// keyAction is an ActionCache key: the canonical Command and Action bytes
// and the Action's digest.
type keyAction struct {
	command, action []byte
	digest          digest.Digest // of action
}

// refKeyAction returns the ActionCache key of a ref: the Action whose
// command is Command{arguments: ["strata-ref/v1", namespace, scope, name]}.
func refKeyAction(k blob.RefKey) keyAction {
	return newKeyAction(refProgram, k.Namespace, k.Scope, k.Name)
}

// sizeKeyAction returns the ActionCache key of the size index entry for d:
// Command{arguments: ["strata-size/v1", "sha256:<hex>"]}.
func sizeKeyAction(d blob.Digest) keyAction {
	return newKeyAction(sizeProgram, string(d))
}

func newKeyAction(args ...string) keyAction {
	cmd := commandBytes(args)
	return finishKeyAction(cmd)
}

func finishKeyAction(cmd []byte) keyAction {
	cd := bytesDigest(cmd)
	act := actionBytes(cd)
	return keyAction{command: cmd, action: act, digest: bytesDigest(act)}
}

// commandBytes is the protobuf encoding of build.bazel.remote.execution.v2.
// Command{arguments: args}: for each argument, the tag byte 0x0a (field 1,
// length-delimited), the length as a varint, the UTF-8 bytes. This is the
// encoding every protobuf library produces for this message.
func commandBytes(args []string) []byte {
	var b []byte
	for _, a := range args {
		b = append(b, 0x0a)
		b = binary.AppendUvarint(b, uint64(len(a)))
		b = append(b, a...)
	}
	return b
}

// actionBytes is the protobuf encoding of Action{command_digest: cd}:
// 0x0a len(D) D, where D is the Digest message 0x0a 0x40 <64 hex chars>
// 0x10 <size varint> (size_bytes is omitted when zero, as proto3 does).
func actionBytes(cd digest.Digest) []byte {
	var dm []byte
	dm = append(dm, 0x0a)
	dm = binary.AppendUvarint(dm, uint64(len(cd.Hash)))
	dm = append(dm, cd.Hash...)
	if cd.Size != 0 {
		dm = append(dm, 0x10)
		dm = binary.AppendUvarint(dm, uint64(cd.Size))
	}
	b := []byte{0x0a}
	b = binary.AppendUvarint(b, uint64(len(dm)))
	return append(b, dm...)
}

func bytesDigest(b []byte) digest.Digest {
	sum := sha256.Sum256(b)
	return digest.Digest{Hash: hex.EncodeToString(sum[:]), Size: int64(len(b))}
}

// toREAPI converts a validated OCI digest and size to a REAPI digest.
func toREAPI(d blob.Digest, size int64) digest.Digest {
	return digest.Digest{Hash: d.Encoded(), Size: size}
}

// fromREAPI converts a REAPI digest from the server to an OCI digest,
// validating it.
func fromREAPI(hash string, size int64) (blob.Digest, error) {
	if _, err := digest.New(hash, size); err != nil {
		return "", err
	}
	return blob.ParseDigest(string(blob.Algorithm) + ":" + hash)
}

// readResource is the ByteStream resource name to read d:
// "{instance}/blobs/{hash}/{size}" or, compressed,
// "{instance}/compressed-blobs/zstd/{hash}/{size}" (size is always the
// uncompressed size). An empty instance drops the leading segment.
func readResource(instance string, d digest.Digest, zstd bool) string {
	return joinResource(instance, "", d, zstd)
}

// writeResource is "{instance}/uploads/{uuid}/blobs/{hash}/{size}" or
// "{instance}/uploads/{uuid}/compressed-blobs/zstd/{hash}/{size}".
func writeResource(instance, uuid string, d digest.Digest, zstd bool) string {
	return joinResource(instance, "uploads/"+uuid, d, zstd)
}

func joinResource(instance, upload string, d digest.Digest, zstd bool) string {
	parts := make([]string, 0, 7)
	if instance != "" {
		parts = append(parts, instance)
	}
	if upload != "" {
		parts = append(parts, upload)
	}
	if zstd {
		parts = append(parts, "compressed-blobs", "zstd")
	} else {
		parts = append(parts, "blobs")
	}
	parts = append(parts, d.Hash, strconv.FormatInt(d.Size, 10))
	return strings.Join(parts, "/")
}
