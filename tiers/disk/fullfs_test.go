package disk

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
)

// TestFullFilesystem puts the root on an 8 MiB tmpfs and fills it.
func TestFullFilesystem(t *testing.T) {
	requireRoot(t, "a full filesystem (needs mount -t tmpfs)")
	requireBinary(t, "mount")
	requireBinary(t, "umount")
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "strata-disk-test", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	root := filepath.Join(mnt, "root")
	// No timed flushes: nothing but the test's own operations writes.
	tr, err := Open(Config{Root: root, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := tr.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	ctx := context.Background()
	var small [][]byte
	for i := 0; i < 3; i++ {
		b := randomBytes(uint64(40+i), 200_000)
		put(t, tr, b)
		small = append(small, b)
	}
	big := randomBytes(50, 12<<20)
	bigD := blob.FromBytes(big)
	err = tr.Put(ctx, bigD, int64(len(big)), bytes.NewReader(big))
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Put of a blob larger than the filesystem = %v, want ENOSPC", err)
	}
	if !strings.Contains(err.Error(), string(bigD)) || !strings.Contains(err.Error(), "no space left") {
		t.Errorf("error %q should name the digest and say the disk is full", err)
	}
	requireMiss(t, tr, bigD)
	if left := dirEntries(t, filepath.Join(root, "tmp")); len(left) != 0 {
		t.Fatalf("temp files left: %v", left)
	}
	if _, err := os.Stat(tr.path(bigD.Encoded())); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("partial blob file: %v", err)
	}
	for _, b := range small {
		mustRead(t, tr, blob.FromBytes(b), b)
	}
	if u := usage(t, tr); u.Blobs != 3 {
		t.Fatalf("usage %+v, want 3 blobs", u)
	}
	// Space was given back: a blob that fits still goes in.
	put(t, tr, randomBytes(51, 1<<20))
}
