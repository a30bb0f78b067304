package ext4

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/materialize/internal/tartest"
	"github.com/strata-oci/strata/tiers/memory"
)

// mountImage loop-mounts image read-only (or read-write) and returns the
// mount point; the mount is removed at cleanup.
func mountImage(t *testing.T, image string, rw bool) string {
	t.Helper()
	mnt := t.TempDir()
	opts := "loop,ro"
	if rw {
		opts = "loop"
	}
	if out, err := exec.Command("mount", "-t", "ext4", "-o", opts, image, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount -o %s %s: %v\n%s", opts, image, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", mnt, err, out)
		}
	})
	return mnt
}

// TestFixturesMountedTreeMatchesExpected converts every shared fixture,
// checks the image with e2fsck -fn, loop-mounts it read-only and compares
// the mounted tree with mutate.Extract's flattening.
func TestFixturesMountedTreeMatchesExpected(t *testing.T) {
	requireRoot(t)
	requireBinary(t, "e2fsck")
	conv, err := New(Config{Store: memory.New(memory.Config{MaxBlob: 256 << 20, Budget: 1 << 30}), WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, fx := range tartest.Fixtures() {
		t.Run(fx.Name, func(t *testing.T) {
			img := fx.Image(t)
			want, err := tartest.Expected(img)
			if err != nil {
				t.Fatal(err)
			}
			res, err := conv.Materialize(context.Background(), tartest.FromV1(t, img), nil)
			if err != nil {
				t.Fatal(err)
			}
			e2fsck(t, res.Path)
			mnt := mountImage(t, res.Path, false)
			got, err := tartest.Snapshot(mnt)
			if err != nil {
				t.Fatal(err)
			}
			// Every ext4 filesystem has lost+found; the images have it too
			// unless a layer supplies its own.
			if _, ok := want["lost+found"]; !ok {
				if n, ok := got["lost+found"]; !ok || n.Type != tartest.TypeDir || n.Mode != 0o700 {
					t.Errorf("lost+found missing or not a 0700 directory: %+v", n)
				}
				delete(got, "lost+found")
			}
			if err := diffTrees(want, got); err != nil {
				t.Errorf("%s (%s): mounted tree differs from mutate.Extract's:\n%v", fx.Name, fx.Description, err)
			}
		})
	}
}

// TestFreeSpaceIsWritable checks that the requested free space and inodes
// exist and can be used on a read-write mount, and that e2fsck still
// passes after writing.
func TestFreeSpaceIsWritable(t *testing.T) {
	requireRoot(t)
	requireBinary(t, "e2fsck")
	conv, err := New(Config{Store: memory.New(memory.Config{}), WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	img := imageOf(tartest.New().Dir("etc").File("etc/a", []byte("a")).Tar())
	opts := &Options{FreeBytes: 200 << 20, FreeInodes: 2000}
	res, err := conv.Materialize(context.Background(), img, opts)
	if err != nil {
		t.Fatal(err)
	}
	e2fsck(t, res.Path)
	rwCopy := filepath.Join(t.TempDir(), "rw.ext4")
	if out, err := exec.Command("cp", "--sparse=always", res.Path, rwCopy).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	if err := os.Chmod(rwCopy, 0o644); err != nil {
		t.Fatal(err)
	}
	mnt := mountImage(t, rwCopy, true)
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if free := int64(st.Bavail) * st.Bsize; free < opts.FreeBytes {
		t.Errorf("free bytes %d < requested %d", free, opts.FreeBytes)
	}
	if int64(st.Ffree) < opts.FreeInodes {
		t.Errorf("free inodes %d < requested %d", st.Ffree, opts.FreeInodes)
	}
	// Use most of it: one big file and many small ones.
	big := make([]byte, 1<<20)
	f, err := os.Create(filepath.Join(mnt, "big"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 150; i++ {
		if _, err := f.Write(big); err != nil {
			t.Fatalf("write after %d MiB: %v", i, err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 1500; i++ {
		if err := os.WriteFile(filepath.Join(mnt, "etc", "f"+itoa(i)), []byte("x"), 0o644); err != nil {
			t.Fatalf("create file %d: %v", i, err)
		}
	}
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v\n%s", err, out)
	}
	e2fsck(t, rwCopy)
	// Remount so the cleanup's umount has something to unmount.
	if out, err := exec.Command("mount", "-o", "loop,ro", rwCopy, mnt).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "etc", "a")); err != nil || string(b) != "a" {
		t.Errorf("etc/a after writes: %q %v", b, err)
	}
}

func itoa(i int) string {
	const digits = "0123456789"
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{digits[i%10]}, b...)
	}
	return string(b)
}
