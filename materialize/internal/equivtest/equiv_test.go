package equivtest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/internal/testenv"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/ext4"
	"github.com/strata-oci/strata/materialize/internal/layerio"
	"github.com/strata-oci/strata/materialize/internal/tartest"
	"github.com/strata-oci/strata/materialize/overlay"
	"github.com/strata-oci/strata/tiers/memory"
)

// Limits shared by both materializers, so that a limit refuses an input in
// both or in neither.
const (
	maxLayerBytes = 64 << 20
	maxEntries    = 5000
)

// input is one image to build both ways.
type input struct {
	name   string
	layers [][]byte // bottom first; tar or compressed tar
	// For rule cases: whether both must refuse it (else both must build
	// it). Fixtures must build; fuzz inputs may go either way.
	refused, checked bool
}

// rules are the cases the one reader decides (each row differed between
// the two materializers before it): the merged tree must be the same.
func rules() []input {
	return []input{
		{name: "root opaque marker hides the lower layers", checked: true, layers: [][]byte{
			tartest.New().Dir("a").File("a/x", []byte("x")).File("low", []byte("l")).Tar(),
			tartest.New().File("up", []byte("u")).Opaque(".").Tar(),
		}},
		{name: "entry under a symlink of the same layer", refused: true, checked: true, layers: [][]byte{
			tartest.New().Dir("etc").File("etc/passwd", []byte("root")).Tar(),
			tartest.New().Symlink("s", "etc").File("s/passwd", []byte("pwned")).Tar(),
		}},
		{name: "entry under a symlink of a lower layer", checked: true, layers: [][]byte{
			tartest.New().Dir("usr").Dir("usr/lib").Symlink("lib", "usr/lib").Tar(),
			tartest.New().File("lib/x", []byte("x")).Tar(),
		}},
		{name: "duplicate entries", checked: true, layers: [][]byte{
			tartest.New().File("f", []byte("first")).File("f", []byte("second")).
				Dir("d", tartest.Mode(0o700)).File("d/c", []byte("c")).Dir("d", tartest.Mode(0o750)).
				Symlink("s", "f").File("s", []byte("file")).Tar(),
		}},
		{name: "invalid whiteout", refused: true, checked: true, layers: [][]byte{
			tartest.New().Dir("a").Header(tar.Header{Typeflag: tar.TypeReg, Name: "a/.wh."}, nil).Tar(),
		}},
		{name: "dot-dot clamped at the root", checked: true, layers: [][]byte{
			tartest.New().Header(tar.Header{Typeflag: tar.TypeReg, Name: "../etc/passwd", Mode: 0o644}, []byte("x")).Tar(),
		}},
		{name: "whiteout and entry of one name in one layer", checked: true, layers: [][]byte{
			tartest.New().File("f", []byte("low")).Dir("d").File("d/low", []byte("l")).Dir("e").File("e/low", nil).Tar(),
			tartest.New().Whiteout("f").File("f", []byte("up")).Whiteout("d").Dir("d").File("d/up", []byte("u")).
				File("e/up", nil).Whiteout("e").Tar(),
		}},
		{name: "implicit parent over a lower directory header", checked: true, layers: [][]byte{
			tartest.New().Dir("p", tartest.Mode(0o700), tartest.Owner(1, 2)).File("p/low", nil).Tar(),
			tartest.New().File("p/q/f", []byte("f")).Whiteout("p/low").Tar(),
		}},
		{name: "opaque marker without its directory's entry", checked: true, layers: [][]byte{
			tartest.New().Dir("o", tartest.Mode(0o700)).File("o/old", nil).Tar(),
			tartest.New().Opaque("o").Tar(),
		}},
		{name: "opaque marker of a directory a lower layer does not have", checked: true, layers: [][]byte{
			tartest.New().File("x", nil).Tar(),
			tartest.New().Opaque("d").Tar(),
		}},
		{name: "sparse entry", checked: true, layers: [][]byte{
			tartest.PAXSparse("s", 1<<20, map[int64][]byte{0: []byte("begin"), 512 << 10: []byte("middle")}),
		}},
		{name: "hard link to a name only a lower layer holds", refused: true, checked: true, layers: [][]byte{
			tartest.New().File("t", []byte("t")).Tar(),
			tartest.New().Link("l", "t").Tar(),
		}},
		{name: "hard links to a target an upper layer shadows", checked: true, layers: [][]byte{
			tartest.New().File("t", []byte("T")).Link("a", "t").Link("b", "a").Tar(),
			tartest.New().Whiteout("t").Tar(),
		}},
		{name: "directory over a lower file, file over a lower directory", checked: true, layers: [][]byte{
			tartest.New().Dir("x").File("x/deep", nil).File("y", []byte("y")).Tar(),
			tartest.New().File("x", []byte("file")).Dir("y").File("y/z", nil).Tar(),
			tartest.New().Dir("x").File("x/top", nil).Tar(),
		}},
	}
}

// corpus reads the materializers' fuzz corpora and this package's (kept
// from FuzzOverlayExt4 runs): files of "go test fuzz v1" whose arguments
// are []byte layers (bottom first).
func corpus(t *testing.T) []input {
	t.Helper()
	var out []input
	for _, dir := range []string{
		"../../ext4/testdata/fuzz/FuzzMaterializers",
		"../../ext4/testdata/fuzz/FuzzFlatten",
		"../../overlay/testdata/fuzz/FuzzApply",
		"testdata/fuzz/FuzzOverlayExt4",
	} {
		files, err := filepath.Glob(filepath.Join(dir, "*"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) == 0 {
			t.Fatalf("no fuzz corpus in %s", dir)
		}
		for _, f := range files {
			layers, err := readCorpusFile(f)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			out = append(out, input{name: filepath.Base(dir) + "/" + filepath.Base(f), layers: layers})
		}
	}
	return out
}

func readCorpusFile(name string) ([][]byte, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 64<<20)
	if !sc.Scan() || sc.Text() != "go test fuzz v1" {
		return nil, errors.New("not a go fuzz corpus file")
	}
	var layers [][]byte
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		lit, ok := strings.CutPrefix(line, "[]byte(")
		if !ok || !strings.HasSuffix(lit, ")") {
			return nil, fmt.Errorf("unexpected argument %.40q", line)
		}
		s, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
		if err != nil {
			return nil, err
		}
		if len(s) > 0 {
			layers = append(layers, []byte(s))
		}
	}
	return layers, sc.Err()
}

// TestOverlayAndExt4BuildTheSameTree builds every fixture, every rule case
// and every fuzz-corpus input with both materializers and compares the
// overlay mount of the layer directories with the loop-mounted ext4 image:
// path, type, mode, owner, size and content of files, symlink targets,
// device numbers, xattrs, non-directory mtimes. An input one refuses the
// other must refuse too.
func TestOverlayAndExt4BuildTheSameTree(t *testing.T) {
	testenv.RequireRoot(t, "comparing an overlay mount with a loop-mounted ext4 image")
	testenv.RequireBinary(t, "mount", "loop-mounting ext4 images")
	om, err := overlay.New(overlay.Config{Root: t.TempDir(), MaxLayerBytes: maxLayerBytes, MaxEntries: maxEntries})
	if err != nil {
		t.Fatal(err)
	}
	conv, err := ext4.New(ext4.Config{Store: memory.New(memory.Config{MaxBlob: 256 << 20, Budget: 1 << 30}),
		WorkDir: t.TempDir(), MaxLayerBytes: maxLayerBytes, MaxEntries: maxEntries, MaxDiskSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	var inputs []input
	for _, fx := range tartest.Fixtures() {
		inputs = append(inputs, input{name: "fixture/" + fx.Name, layers: fx.Layers, checked: true})
	}
	for _, r := range rules() {
		r.name = "rule/" + r.name
		inputs = append(inputs, r)
	}
	inputs = append(inputs, corpus(t)...)
	var both, refused int
	for _, in := range inputs {
		t.Run(in.name, func(t *testing.T) {
			img := imageOf(in.layers)
			ot, oerr := overlayTree(t, om, img)
			et, eerr := ext4Tree(t, conv, img)
			switch {
			case in.checked && in.refused && (oerr == nil || eerr == nil):
				t.Fatalf("want both to refuse the input:\noverlay: %v\next4: %v", oerr, eerr)
			case in.checked && !in.refused && (oerr != nil || eerr != nil):
				t.Fatalf("want both to build the input:\noverlay: %v\next4: %v", oerr, eerr)
			case oerr != nil && eerr != nil:
				refused++
				for _, err := range []error{oerr, eerr} {
					if !errors.Is(err, layerio.ErrInvalidLayer) && !errors.Is(err, layerio.ErrLimitExceeded) {
						t.Logf("refused for another reason: %v", err)
					}
				}
				return
			case oerr != nil || eerr != nil:
				t.Fatalf("only one materializer refuses the input:\noverlay: %v\next4: %v", oerr, eerr)
			}
			both++
			if _, ok := ot["lost+found"]; !ok {
				delete(et, "lost+found") // every ext4 file system has one
			}
			if d := tartest.Diff(ot, et); d != nil {
				t.Errorf("ext4 tree (got) differs from the overlay mount (want):\n%s", strings.Join(d, "\n"))
			}
		})
	}
	t.Logf("%d inputs built the same tree both ways, %d refused by both", both, refused)
	if both == 0 {
		t.Error("no input was built by both materializers")
	}
}

// FuzzOverlayExt4 feeds two layers (lower, upper) to both materializers:
// both must refuse them, or both build the same tree.
func FuzzOverlayExt4(f *testing.F) {
	testenv.RequireRoot(f, "comparing an overlay mount with a loop-mounted ext4 image")
	testenv.RequireBinary(f, "mount", "loop-mounting ext4 images")
	for _, r := range rules() {
		if len(r.layers) == 2 {
			f.Add(r.layers[0], r.layers[1])
		} else {
			f.Add(r.layers[0], []byte(nil))
		}
	}
	for _, fx := range tartest.Fixtures() {
		if len(fx.Layers) >= 2 {
			f.Add(fx.Layers[0], fx.Layers[1])
		}
	}
	om, err := overlay.New(overlay.Config{Root: f.TempDir(), MaxLayerBytes: maxLayerBytes, MaxEntries: maxEntries})
	if err != nil {
		f.Fatal(err)
	}
	conv, err := ext4.New(ext4.Config{Store: memory.New(memory.Config{MaxBlob: 256 << 20, Budget: 1 << 30}),
		WorkDir: f.TempDir(), MaxLayerBytes: maxLayerBytes, MaxEntries: maxEntries, MaxDiskSize: 1 << 30})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, lower, upper []byte) {
		var layers [][]byte
		for _, l := range [][]byte{lower, upper} {
			if len(l) > 0 {
				layers = append(layers, l)
			}
		}
		if len(layers) == 0 {
			return
		}
		img := imageOf(layers)
		ot, oerr := overlayTree(t, om, img)
		om.Cleanup(context.Background())
		et, eerr := ext4Tree(t, conv, img)
		conv.Cleanup(context.Background(), img, nil)
		switch {
		case oerr != nil && eerr != nil:
			return
		case oerr != nil || eerr != nil:
			t.Fatalf("only one materializer refuses the input:\noverlay: %v\next4: %v", oerr, eerr)
		}
		if _, ok := ot["lost+found"]; !ok {
			delete(et, "lost+found")
		}
		if d := tartest.Diff(ot, et); d != nil {
			t.Fatalf("ext4 tree (got) differs from the overlay mount (want):\n%s", strings.Join(d, "\n"))
		}
	})
}

func imageOf(layers [][]byte) manifest.Image {
	ls := make([]manifest.Layer, len(layers))
	for i, b := range layers {
		ls[i] = tartest.RawLayer(b, tartest.MediaTypeOf(b))
	}
	return tartest.RawImage(ls...)
}

func overlayTree(t *testing.T, m *overlay.Materializer, img manifest.Image) (tartest.Tree, error) {
	t.Helper()
	res, err := m.Materialize(context.Background(), img)
	if err != nil {
		return nil, err
	}
	defer res.Lease.Release()
	target := t.TempDir()
	if err := res.Mount(target); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	defer func() {
		if err := unix.Unmount(target, 0); err != nil {
			t.Errorf("unmount %s: %v", target, err)
		}
	}()
	tree, err := tartest.Snapshot(target)
	if err != nil {
		t.Fatal(err)
	}
	return tree, nil
}

func ext4Tree(t *testing.T, c *ext4.Converter, img manifest.Image) (tartest.Tree, error) {
	t.Helper()
	res, err := c.Materialize(context.Background(), img, nil)
	if err != nil {
		return nil, err
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "ext4", "-o", "loop,ro", res.Path, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount ext4: %v\n%s", err, out)
	}
	defer func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", mnt, err, out)
		}
	}()
	tree, err := tartest.Snapshot(mnt)
	if err != nil {
		t.Fatal(err)
	}
	return tree, nil
}
