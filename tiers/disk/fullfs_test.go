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

// mountTmpfs mounts a tmpfs of size (mount's syntax, "32m") on a temp dir
// for the test.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	requireRoot(t, "a full filesystem (needs mount -t tmpfs)")
	requireBinary(t, "mount")
	requireBinary(t, "umount")
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "strata-disk-test", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

// fillUp writes a file at path until the filesystem has no byte left.
func fillUp(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	if free, err := freeBytes(filepath.Dir(path)); err != nil || free != 0 {
		t.Fatalf("filesystem not full: %d bytes free (%v)", free, err)
	}
}

// TestFullFilesystemIndexReadOnly: on a filesystem with no byte free, Open
// works (the index read-only), blobs read, verify and can be deleted and
// evicted, which frees space; Put and PutRef fail with ENOSPC; once there
// is room again the index is written, and the next Open agrees.
func TestFullFilesystemIndexReadOnly(t *testing.T) {
	ctx := context.Background()
	mnt := mountTmpfs(t, "32m")
	root := filepath.Join(mnt, "root")
	tr, err := Open(Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	// Blobs until the tier declines for want of room: it keeps the reserve.
	var stored [][]byte
	for i := 0; ; i++ {
		b := randomBytes(uint64(500+i), 1<<20)
		err := tr.Put(ctx, blob.FromBytes(b), int64(len(b)), bytes.NewReader(b))
		if errors.Is(err, syscall.ENOSPC) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, b)
	}
	if free, _ := freeBytes(mnt); free < IndexReserve {
		t.Fatalf("Put left %d bytes free, less than the index reserve", free)
	}
	key := blob.RefKey{Namespace: blob.NamespaceTag, Name: "example.com/app:v1"}
	if err := tr.PutRef(ctx, key, blob.Ref{Digest: blob.FromBytes(stored[0]), Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	fillUp(t, filepath.Join(mnt, "filler"))

	tr = openTier(t, Config{Root: root, FlushInterval: time.Hour})
	if !tr.IndexReadOnly() {
		t.Fatal("IndexReadOnly() = false on a full filesystem")
	}
	if u := usage(t, tr); u.Blobs != int64(len(stored)) || u.Refs != 1 {
		t.Fatalf("usage %+v, want %d blobs and 1 ref", u, len(stored))
	}
	mustRead(t, tr, blob.FromBytes(stored[1]), stored[1])
	extra := randomBytes(600, 1000)
	if err := tr.Put(ctx, blob.FromBytes(extra), 1000, bytes.NewReader(extra)); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Put on a full filesystem: %v, want ENOSPC", err)
	}
	if err := tr.PutRef(ctx, key, blob.Ref{Digest: blob.FromBytes(extra), Size: 1000}); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("PutRef on a full filesystem: %v, want ENOSPC", err)
	}
	var checked int
	if err := tr.Verify(ctx, true, func(_ blob.Info, err error) {
		checked++
		if err != nil {
			t.Errorf("verify: %v", err)
		}
	}); err != nil || checked != len(stored) {
		t.Fatalf("Verify: %v, %d of %d checked", err, checked, len(stored))
	}
	// One deletion frees less than the reserve: the index stays read-only
	// and the deletions are kept in memory.
	if err := tr.Delete(ctx, blob.FromBytes(stored[0])); err != nil {
		t.Fatal(err)
	}
	if err := tr.DeleteRef(ctx, key); err != nil {
		t.Fatal(err)
	}
	requireMiss(t, tr, blob.FromBytes(stored[0]))
	if _, err := tr.GetRef(ctx, key); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("GetRef after DeleteRef: %v", err)
	}
	if _, err := os.Stat(tr.path(blob.FromBytes(stored[0]).Encoded())); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("deleted blob's file: %v", err)
	}
	if !tr.IndexReadOnly() {
		t.Fatal("index writable with less than the reserve free")
	}
	if u := usage(t, tr); u.Blobs != int64(len(stored)-1) || u.Refs != 0 {
		t.Fatalf("usage after deletions %+v, want %d blobs and no ref", u, len(stored)-1)
	}
	// Evicting frees more than the reserve: the index is written again.
	n, _, err := tr.EvictTo(ctx, int64(len(stored)-8)<<20)
	if err != nil || n != 7 {
		t.Fatalf("EvictTo: %d evicted, %v; want 7", n, err)
	}
	put(t, tr, extra) // there is room now
	if tr.IndexReadOnly() {
		t.Fatal("index still read-only after eviction freed room")
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	tr = openTier(t, Config{Root: root})
	if got := tr.Reconciled(); got != (ReconcileStats{}) {
		t.Fatalf("reopen repaired %+v: the deletions were not written", got)
	}
	if u := usage(t, tr); u.Blobs != int64(len(stored)-8+1) || u.Refs != 0 {
		t.Fatalf("usage after reopen %+v, want %d blobs and no ref", u, len(stored)-8+1)
	}
}

// TestFullFilesystemStaysFull: deletions made while the filesystem stays
// full reach the index through the next Open (missing files forgotten).
func TestFullFilesystemStaysFull(t *testing.T) {
	ctx := context.Background()
	mnt := mountTmpfs(t, "16m")
	root := filepath.Join(mnt, "root")
	tr, err := Open(Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	var ds []blob.Digest
	for i := range 4 {
		ds = append(ds, put(t, tr, randomBytes(uint64(700+i), 100_000)))
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	fillUp(t, filepath.Join(mnt, "filler"))
	tr, err = Open(Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Delete(ctx, ds[0]); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	tr = openTier(t, Config{Root: root})
	requireMiss(t, tr, ds[0])
	if u := usage(t, tr); u.Blobs != 3 {
		t.Fatalf("usage %+v, want 3 blobs", u)
	}
}
