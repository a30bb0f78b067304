package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/strata-oci/strata/internal/admin"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/internal/testenv"
)

// TestFullFilesystem: with the root on a filesystem that has no byte left,
// the inspection and freeing commands work (du, ls, verify, verify
// --remove, gc, evict), a fetch says plainly that it could not cache the
// image and exits 8, and eviction gives the space back.
func TestFullFilesystem(t *testing.T) {
	testenv.RequireRoot(t, "blobctl on a full filesystem (needs mount -t tmpfs)")
	testenv.RequireBinary(t, "mount", "blobctl on a full filesystem")
	testenv.RequireBinary(t, "umount", "blobctl on a full filesystem")
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "strata-blobctl-test", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	f := newFixture(t, 4<<20, 4) // four layers of 4 MiB of random bytes
	f.root = filepath.Join(mnt, "root")
	f.flags = []string{"--root", f.root, "--allow-cidr", "127.0.0.0/8"}
	must(t, f.args("fetch", f.ref)...)
	layers, blobs := f.layers(t)

	fillUp(t, filepath.Join(mnt, "filler"))

	du := must(t, f.args("du", "--json")...)
	for _, u := range decode[[]admin.UsageRecord](t, du) {
		if u.Tier == admin.TierDisk && u.Blobs < int64(len(layers)) {
			t.Fatalf("du on a full filesystem: disk holds %d blobs, want at least %d", u.Blobs, len(layers))
		}
	}
	if out := must(t, f.args("ls")...); !strings.Contains(out, strings.TrimPrefix(layers[0], "sha256:")) {
		t.Fatalf("ls does not list layer %s:\n%s", layers[0], out)
	}
	must(t, f.args("verify")...)
	must(t, f.args("verify", "--remove")...)
	must(t, f.args("gc")...)

	// A second image cannot be stored: fetch reads it, says so, exits 8.
	img2, err := random.Image(1<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	registrytest.Push(t, f.reg, "other:v1", img2, nil)
	r := blobctl(t, "", f.args("fetch", f.reg+"/other:v1")...)
	if r.code != exitNotCached {
		t.Fatalf("fetch onto a full filesystem: exit %d, want %d\nstdout: %s\nstderr: %s", r.code, exitNotCached, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "fetched but not cached") || !strings.Contains(r.stderr, "no space left on device") {
		t.Fatalf("fetch does not say plainly that nothing was cached:\n%s", r.stderr)
	}
	if !strings.Contains(r.stdout, "fetched ") {
		t.Fatalf("the fetch itself should succeed:\n%s", r.stdout)
	}

	// Evicting frees space on the filesystem.
	must(t, f.args("evict", layers[0])...)
	if free := freeOn(t, mnt); free < int64(len(blobs[0]))-64<<10 { // less a few pages the commands took
		t.Fatalf("evicting a layer of %d bytes left %d bytes free", len(blobs[0]), free)
	}
	must(t, f.args("evict", "--to-size", "0", "--tier", "disk")...)
	for _, u := range decode[[]admin.UsageRecord](t, must(t, f.args("du", "--json")...)) {
		if u.Tier == admin.TierDisk && (u.Blobs != 0 || u.Bytes != 0) {
			t.Fatalf("after evict --to-size 0: %+v", u)
		}
	}
	// With room again, fetch caches.
	must(t, f.args("fetch", f.reg+"/other:v1")...)
}

// fillUp writes a file at path until its filesystem has no byte left.
func fillUp(t *testing.T, path string) {
	t.Helper()
	fh, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := fh.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	if free := freeOn(t, filepath.Dir(path)); free != 0 {
		t.Fatalf("filesystem not full: %d bytes free", free)
	}
}

func freeOn(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bfree) * st.Bsize
}
