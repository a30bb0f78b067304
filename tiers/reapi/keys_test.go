package reapi

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/strata-oci/strata/blob"
)

// TestKeyEncodingMatchesProtobuf: the hand-written Command and Action bytes
// are exactly what a protobuf library produces, so any REAPI client can
// compute the keys from docs/reapi.md with its own protobuf code.
func TestKeyEncodingMatchesProtobuf(t *testing.T) {
	tests := []struct {
		desc string
		args []string
	}{
		{"ref with empty scope", []string{refProgram, "tag", "", "docker.io/library/alpine:3.20"}},
		{"ref with scope", []string{refProgram, "proof", "tenant-a", "ghcr.io/org/app"}},
		{"size index", []string{sizeProgram, string(blob.EmptyDigest)}},
		{"long name (multi-byte length varint)", []string{refProgram, "derived", "s", strings.Repeat("é", 500)}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			want, err := proto.MarshalOptions{Deterministic: true}.Marshal(&repb.Command{Arguments: tt.args})
			if err != nil {
				t.Fatal(err)
			}
			ka := newKeyAction(tt.args...)
			if !bytes.Equal(ka.command, want) {
				t.Fatalf("Command bytes\n got %x\nwant %x", ka.command, want)
			}
			var back repb.Command
			if err := proto.Unmarshal(ka.command, &back); err != nil || len(back.Arguments) != len(tt.args) {
				t.Fatalf("Command does not decode: %v", err)
			}
			cd := digest.NewFromBlob(want)
			wantAction, err := proto.MarshalOptions{Deterministic: true}.Marshal(&repb.Action{CommandDigest: cd.ToProto()})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(ka.action, wantAction) {
				t.Fatalf("Action bytes\n got %x\nwant %x", ka.action, wantAction)
			}
			if ka.digest != digest.NewFromBlob(wantAction) {
				t.Fatalf("action digest %v, want %v", ka.digest, digest.NewFromBlob(wantAction))
			}
		})
	}
}

// TestKeyGolden pins the worked examples in docs/reapi.md: changing them is
// a format change.
func TestKeyGolden(t *testing.T) {
	tests := []struct {
		desc         string
		ka           keyAction
		commandHex   string
		actionDigest string
	}{
		{
			desc:         "ref tag//docker.io/library/alpine:3.20",
			ka:           refKeyAction(blob.RefKey{Namespace: "tag", Name: "docker.io/library/alpine:3.20"}),
			commandHex:   hex.EncodeToString([]byte("\x0a\x0dstrata-ref/v1\x0a\x03tag\x0a\x00\x0a\x1ddocker.io/library/alpine:3.20")),
			actionDigest: goldenRefAction,
		},
		{
			desc:         "size index of the empty blob",
			ka:           sizeKeyAction(blob.EmptyDigest),
			commandHex:   hex.EncodeToString([]byte("\x0a\x0estrata-size/v1\x0a\x47" + string(blob.EmptyDigest))),
			actionDigest: goldenSizeAction,
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			if got := hex.EncodeToString(tt.ka.command); got != tt.commandHex {
				t.Errorf("Command = %s, want %s", got, tt.commandHex)
			}
			if got := tt.ka.digest.String(); got != tt.actionDigest {
				t.Errorf("Action digest = %s, want %s", got, tt.actionDigest)
			}
		})
	}
}

// Worked examples (hash/size) quoted in docs/reapi.md.
const (
	goldenRefAction  = "4b1ec76998e98de5b2efe4395cad37f084c5c8bf0e95454c75e4bec2748aa37b/70"
	goldenSizeAction = "b1f1d6a3aa7aa6e2046baec21c4724d59c112f155fb8542b0a9a0bd8b455556e/70"
)

// TestKeysAreInjective: keys that differ in how a string splits into
// namespace, scope and name, or in their kind, never share an action.
func TestKeysAreInjective(t *testing.T) {
	keys := []blob.RefKey{
		{Namespace: "tag", Scope: "a/b", Name: "c"},
		{Namespace: "tag", Scope: "a", Name: "b/c"},
		{Namespace: "tag", Scope: "", Name: "a/b/c"},
		{Namespace: "tag", Scope: "ab", Name: "c"},
		{Namespace: "tag", Scope: "a", Name: "bc"},
		{Namespace: "tagab", Scope: "", Name: "c"},
	}
	seen := map[digest.Digest]string{}
	for _, k := range keys {
		d := refKeyAction(k).digest
		if prev, dup := seen[d]; dup {
			t.Fatalf("%q and %q share action %v", prev, k, d)
		}
		seen[d] = k.String()
	}
	s := sizeKeyAction(blob.EmptyDigest).digest
	if _, dup := seen[s]; dup {
		t.Fatal("a size index key equals a ref key")
	}
}

func TestResourceNames(t *testing.T) {
	d := digest.Digest{Hash: strings.Repeat("a", 64), Size: 42}
	tests := []struct {
		desc, got, want string
	}{
		{"read", readResource("instance", d, false), "instance/blobs/" + d.Hash + "/42"},
		{"read zstd", readResource("instance", d, true), "instance/compressed-blobs/zstd/" + d.Hash + "/42"},
		{"read, no instance", readResource("", d, false), "blobs/" + d.Hash + "/42"},
		{"read, nested instance", readResource("a/b", d, false), "a/b/blobs/" + d.Hash + "/42"},
		{"write", writeResource("instance", "U", d, false), "instance/uploads/U/blobs/" + d.Hash + "/42"},
		{"write zstd", writeResource("instance", "U", d, true), "instance/uploads/U/compressed-blobs/zstd/" + d.Hash + "/42"},
		{"write, no instance", writeResource("", "U", d, false), "uploads/U/blobs/" + d.Hash + "/42"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: %q, want %q", tt.desc, tt.got, tt.want)
		}
	}
}
