package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/strata-oci/strata/internal/testenv"
	"io"
	"os"
	"os/exec"
	"path"
	"strings"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/internal/layerio"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// requireRoot fails under CI=true without root, and skips otherwise.
func requireRoot(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t, "the loop-mounted image tree")
}

// requireBinary returns the path of a binary the test needs; a missing one
// fails under CI=true and skips otherwise.
func requireBinary(t testing.TB, name string) string {
	t.Helper()
	return testenv.RequireBinary(t, name, "the image with "+name+" (scripts/test.sh installs e2fsprogs)")
}

// e2fsck runs e2fsck -fn on image and fails the test unless it is clean.
func e2fsck(t testing.TB, image string) {
	t.Helper()
	bin := requireBinary(t, "e2fsck")
	out, err := exec.Command(bin, "-fn", image).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", image, err, out)
	}
}

// rawLayer is an uncompressed in-memory layer; failAfter > 0 makes its
// reader fail after that many bytes (fault injection at the layer seam).
type rawLayer struct {
	data      []byte
	failAfter int
}

var errInjected = errors.New("injected layer read failure")

func (l *rawLayer) Digest() blob.Digest             { return blob.FromBytes(l.data) }
func (l *rawLayer) Authorize(context.Context) error { return nil }
func (l *rawLayer) MediaType() types.MediaType {
	return types.MediaType("application/vnd.oci.image.layer.v1.tar")
}
func (l *rawLayer) Size() int64 { return int64(len(l.data)) }
func (l *rawLayer) Open(ctx context.Context) (io.ReadCloser, error) {
	var r io.Reader = bytes.NewReader(l.data)
	if l.failAfter > 0 {
		return io.NopCloser(io.MultiReader(io.LimitReader(r, int64(l.failAfter)), failReader{})), nil
	}
	return blob.NewVerifier(r, l.Digest(), l.Size(), nil), nil
}

type failReader struct{}

func (failReader) Read([]byte) (int, error) { return 0, errInjected }

// testImage is an image of in-memory layers; its digest derives from the
// layers' digests.
type testImage struct{ layers []manifest.Layer }

func (i *testImage) Digest() blob.Digest {
	var s string
	for _, l := range i.layers {
		s += string(l.Digest())
	}
	return blob.FromBytes([]byte("image:" + s))
}
func (i *testImage) Layers() []manifest.Layer { return i.layers }
func (i *testImage) Origin() string           { return "test" }
func (i *testImage) LocalOnly() bool          { return false }

func imageOf(layers ...[]byte) *testImage {
	img := &testImage{}
	for _, l := range layers {
		img.layers = append(img.layers, &rawLayer{data: l})
	}
	return img
}

// openers returns TarOpeners for the uncompressed tar layers, bottom first.
func openers(layers ...[]byte) []TarOpener {
	out := make([]TarOpener, len(layers))
	for i, l := range layers {
		out[i] = func(context.Context) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(l)), nil }
	}
	return out
}

// treeOfTar reads a flattened stream as a tartest.Tree, checking the
// properties the ext4 writer relies on: no duplicate non-directory paths,
// parents before children, hard-link targets written before the link.
func treeOfTar(t testing.TB, stream []byte) tartest.Tree {
	t.Helper()
	tree := tartest.Tree{}
	seen := map[string]bool{".": true}
	tr := tar.NewReader(bytes.NewReader(stream))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return tree
		}
		if err != nil {
			t.Fatalf("flattened stream: %v", err)
		}
		name, err := layerio.CleanName(h.Name)
		if err != nil || name != strings.TrimSuffix(h.Name, "/") && name != "" {
			t.Fatalf("flattened stream: bad name %q", h.Name)
		}
		if name == "" {
			continue
		}
		if !seen[parentDir(name)] {
			t.Errorf("flattened stream: %s precedes its parent", name)
		}
		if prev, dup := tree[name]; dup && !(prev.Type == tartest.TypeDir && h.Typeflag == tar.TypeDir) {
			t.Errorf("flattened stream: %s written twice", name)
		}
		seen[name] = true
		n := tartest.Node{Mode: uint32(h.Mode) & 0o7777, UID: h.Uid, GID: h.Gid, MTime: h.ModTime.Unix()}
		switch h.Typeflag {
		case tar.TypeReg:
			hs := sha256.New()
			sz, _ := io.Copy(hs, tr)
			n.Type, n.Size, n.SHA256 = tartest.TypeFile, sz, hex.EncodeToString(hs.Sum(nil))
		case tar.TypeLink:
			target, ok := tree[path.Clean(h.Linkname)]
			if !ok || target.Type != tartest.TypeFile {
				t.Errorf("flattened stream: hard link %s -> %s: target not written before", name, h.Linkname)
			}
			n = target
		case tar.TypeDir:
			n.Type = tartest.TypeDir
		case tar.TypeSymlink:
			n.Type, n.Link = tartest.TypeSymlink, h.Linkname
		case tar.TypeChar:
			n.Type, n.Major, n.Minor = tartest.TypeChar, uint32(h.Devmajor), uint32(h.Devminor)
		case tar.TypeBlock:
			n.Type, n.Major, n.Minor = tartest.TypeBlock, uint32(h.Devmajor), uint32(h.Devminor)
		case tar.TypeFifo:
			n.Type = tartest.TypeFIFO
		default:
			t.Errorf("flattened stream: %s has tar type %q", name, h.Typeflag)
		}
		for k, v := range h.PAXRecords {
			if x, ok := cutPrefix(k, "SCHILY.xattr."); ok {
				if n.Xattrs == nil {
					n.Xattrs = map[string]string{}
				}
				n.Xattrs[x] = v
			}
		}
		tree[name] = n
	}
}

func cutPrefix(s, p string) (string, bool) {
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return "", false
}

// diffTrees is tartest.Diff as one error message.
func diffTrees(want, got tartest.Tree) error {
	d := tartest.Diff(want, got)
	if len(d) == 0 {
		return nil
	}
	var b bytes.Buffer
	for _, l := range d {
		fmt.Fprintln(&b, l)
	}
	return errors.New(b.String())
}

func osReadDir(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, err
}
