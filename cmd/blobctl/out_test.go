package main

import (
	"bytes"
	"github.com/strata-oci/strata/materialize/ext4"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// images lists the handouts in the root's ext4 dir.
func images(t *testing.T, root string) []string {
	t.Helper()
	imgs, err := filepath.Glob(filepath.Join(root, "ext4", "images", "*.ext4"))
	if err != nil {
		t.Fatal(err)
	}
	return imgs
}

func statT(t *testing.T, p string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t)
}

// TestExt4OutChecked: a bad --out fails before any work (no root opened,
// nothing fetched), with a usage error naming the problem.
func TestExt4OutChecked(t *testing.T) {
	f := newFixture(t, 4<<10, 1)
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		desc, out, want string
	}{
		{"missing parent", filepath.Join(dir, "nope", "x.ext4"), "does not exist; create it first"},
		{"parent is a file", filepath.Join(file, "x.ext4"), "is not a directory"},
		{"out is a directory", dir, "is a directory; give a file name"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			r := blobctl(t, "", f.args("materialize", f.ref, "--format", "ext4", "--out", tc.out)...)
			if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", r.code, r.stderr, exitUsage, tc.want)
			}
			if _, err := os.Stat(f.root); !os.IsNotExist(err) {
				t.Errorf("the root was opened before --out was checked: %v", err)
			}
		})
	}
	if r := blobctl(t, "", f.args("materialize", f.ref, "--format", "ext4", "--out", "-", "--json")...); r.code != exitUsage {
		t.Errorf("--out - with --json: exit %d, want %d", r.code, exitUsage)
	}
}

// TestExt4OutPlacement: --out takes over the converter's image (reflink or
// hard link on one filesystem) and no second copy stays in ext4-dir,
// unless --keep; "-" writes the image to stdout.
func TestExt4OutPlacement(t *testing.T) {
	withUmask(t, 0o022)
	f := newFixture(t, 16<<10, 2)
	dir := t.TempDir()

	out := filepath.Join(dir, "a.ext4")
	r := decode[ext4Result](t, must(t, f.args("materialize", f.ref, "--format", "ext4", "--out", out, "--json")...))
	if r.Placed != ext4.PlacedReflink && r.Placed != ext4.PlacedCopyFileRange {
		t.Errorf("placed by %q, want a reflink or an in-kernel copy on one filesystem", r.Placed)
	}
	if imgs := images(t, f.root); len(imgs) != 0 {
		t.Errorf("a second copy stayed in ext4-dir: %v", imgs)
	}
	st := statT(t, out)
	if st.Nlink != 1 || os.FileMode(st.Mode).Perm() != 0o600 || st.Size != r.Size {
		t.Errorf("--out: %d links, mode %v, %d bytes; want 1 link, 0600, %d bytes", st.Nlink, os.FileMode(st.Mode).Perm(), st.Size, r.Size)
	}
	want, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}

	// --keep: the handout stays (0400, for later calls) and --out is a
	// file of its own.
	kept := filepath.Join(dir, "b.ext4")
	r = decode[ext4Result](t, must(t, f.args("materialize", f.ref, "--format", "ext4", "--out", kept, "--keep", "--json")...))
	imgs := images(t, f.root)
	if len(imgs) != 1 {
		t.Fatalf("--keep: handouts %v, want one", imgs)
	}
	hs, ks := statT(t, imgs[0]), statT(t, kept)
	if hs.Ino == ks.Ino || os.FileMode(hs.Mode).Perm() != 0o400 || os.FileMode(ks.Mode).Perm() != 0o600 {
		t.Errorf("--keep: handout inode %d mode %v, --out inode %d mode %v; want two files, 0400 and 0600",
			hs.Ino, os.FileMode(hs.Mode).Perm(), ks.Ino, os.FileMode(ks.Mode).Perm())
	}
	if got, _ := os.ReadFile(kept); !bytes.Equal(got, want) {
		t.Error("--keep: --out differs from the first image")
	}

	// --link: --out is the cached image itself, read-only; no bytes
	// written, and the tier's file is not made writable.
	linked := filepath.Join(dir, "c.ext4")
	r = decode[ext4Result](t, must(t, f.args("materialize", f.ref, "--format", "ext4", "--out", linked, "--link", "--json")...))
	ls := statT(t, linked)
	if r.Placed != ext4.PlacedLink || ls.Nlink < 2 || os.FileMode(ls.Mode).Perm() != 0o400 {
		t.Errorf("--link: placed by %q, %d links, mode %v; want a link of the cached file, 0400", r.Placed, ls.Nlink, os.FileMode(ls.Mode).Perm())
	}
	if got, _ := os.ReadFile(linked); !bytes.Equal(got, want) {
		t.Error("--link: --out differs from the first image")
	}
	os.Remove(linked)

	// "-": the image on stdout, the summary on stderr, no file named "-".
	wd, _ := os.Getwd()
	res := blobctl(t, "", f.args("materialize", f.ref, "--format", "ext4", "--out", "-")...)
	if res.code != 0 || !bytes.Equal([]byte(res.stdout), want) || !strings.Contains(res.stderr, "wrote stdout: ext4 image of") {
		t.Errorf("--out -: exit %d, %d bytes on stdout (want %d), stderr %q", res.code, len(res.stdout), len(want), res.stderr)
	}
	if _, err := os.Lstat(filepath.Join(wd, "-")); !os.IsNotExist(err) {
		os.Remove(filepath.Join(wd, "-"))
		t.Errorf("--out - created a file named -")
	}
	if imgs := images(t, f.root); len(imgs) != 0 {
		t.Errorf("--out - kept the handout: %v", imgs)
	}
	// Leftovers: nothing but the outputs in the --out directory.
	es, _ := os.ReadDir(dir)
	if len(es) != 2 {
		var names []string
		for _, e := range es {
			names = append(names, e.Name())
		}
		t.Errorf("the --out directory holds %v, want a.ext4 and b.ext4", names)
	}
}
