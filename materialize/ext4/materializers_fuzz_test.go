package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"os/exec"
	"testing"

	"github.com/strata-oci/strata/materialize/internal/tartest"
	"github.com/strata-oci/strata/materialize/overlay"
)

// FuzzMaterializers feeds the same two tar layers (lower, upper) to both
// materializers: the overlay materializer must not panic (errors are
// expected for most inputs), and every ext4 image the converter accepts
// must pass "e2fsck -fn" (the package's promise).
func FuzzMaterializers(f *testing.F) {
	f.Add(tartest.New().File("t", []byte("T")).Link("a", "t").Tar(), tartest.New().Whiteout("t").Opaque("d").Tar())
	f.Add(tartest.New().Dir("d").File("d/x", []byte("x")).Tar(), tartest.New().File("d", []byte("f")).Tar())
	f.Add(paxSparseBomb(), []byte(nil))
	f.Add(tartest.New().Symlink("long", string(bytes.Repeat([]byte("x"), 4096))).Tar(), []byte(nil))
	f.Add(tartest.New().Symlink("max", string(bytes.Repeat([]byte("y"), 4095))).Tar(), tartest.New().Symlink("s", "/max").Tar())
	f.Add(tartest.New().Dir("o", tartest.Xattr("trusted.overlay.opaque", []byte("y"))).
		File("o/f", []byte("f"), tartest.Xattr("user.overlay.redirect", []byte("/x")), tartest.Xattr("user.k", []byte("v"))).Tar(), []byte(nil))
	f.Add(tartest.New().Dir("ro", tartest.Mode(0o555)).File("ro/f", []byte("f")).Dir("none", tartest.Mode(0)).File("none/g", nil).Tar(),
		tartest.New().Header(tar.Header{Typeflag: tar.TypeReg, Name: "ro/f", Size: 3, Mode: 0o4755}, []byte("abc")).Tar())
	for _, fx := range tartest.Fixtures() {
		if len(fx.Layers) >= 2 {
			f.Add(fx.Layers[0], fx.Layers[1])
		}
	}
	bin := requireBinary(f, "e2fsck")
	work := f.TempDir()
	c := converterWith(f, Config{WorkDir: work, MaxLayerBytes: 4 << 20, MaxDiskSize: 256 << 20, MaxEntries: 2000})
	om, err := overlay.New(overlay.Config{Root: f.TempDir(), MaxLayerBytes: 4 << 20, MaxEntries: 2000, UserXattr: os.Geteuid() != 0})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, lower, upper []byte) {
		img := imageOf(lower, upper)
		if res, err := om.Materialize(context.Background(), img); err == nil {
			res.Lease.Release()
		}
		om.Cleanup(context.Background())

		p, err := buildImage(t, c, img)
		defer os.Remove(p)
		if err != nil {
			return
		}
		if out, err := exec.Command(bin, "-fn", p).CombinedOutput(); err != nil {
			t.Fatalf("e2fsck -fn rejects the image of an accepted input: %v\n%s", err, out)
		}
	})
}
