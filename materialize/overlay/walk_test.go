package overlay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// referenceManifest is the manifest of dir as the first version of
// walkLayer wrote it (filepath.WalkDir, DirEntry.Info, fmt.Sprintf): the
// format manifests already on disk are in, which walkLayer must keep.
func referenceManifest(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		rel, rerr := filepath.Rel(dir, p)
		if rerr != nil {
			return rerr
		}
		if err != nil {
			if d != nil && d.IsDir() && errors.Is(err, fs.ErrPermission) {
				out = append(out, strconv.Quote(rel+"/")+" !")
				return fs.SkipDir
			}
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		typ, size, rdev, hsum, link := "", "-", uint64(0), "-", ""
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFDIR:
			typ = "d"
		case syscall.S_IFREG:
			typ, size = "f", strconv.FormatInt(st.Size, 10)
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s := sha256.Sum256(b)
			hsum = hex.EncodeToString(s[:])
		case syscall.S_IFLNK:
			typ = "l"
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		case syscall.S_IFCHR:
			typ, rdev = "c", uint64(st.Rdev)
		case syscall.S_IFBLK:
			typ, rdev = "b", uint64(st.Rdev)
		case syscall.S_IFIFO:
			typ = "p"
		case syscall.S_IFSOCK:
			typ = "s"
		default:
			typ = "?"
		}
		xs, err := xattrDigest(p)
		if err != nil {
			return err
		}
		fields := fmt.Sprintf("%s %o %d %d %s %d %s %s", typ, st.Mode&0o7777, st.Uid, st.Gid, size, rdev, hsum, xs)
		if typ == "l" {
			fields += " " + strconv.Quote(link)
		}
		out = append(out, strconv.Quote(rel)+" "+fields)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestManifestFormatUnchanged: the manifest writeManifest writes for a
// tree of every kind of entry (with odd names, modes, owners, device
// numbers, xattrs and link targets) is, line for line, the one the first
// version wrote, so manifests written before still verify.
func TestManifestFormatUnchanged(t *testing.T) {
	dir := t.TempDir()
	layer := filepath.Join(dir, "layer")
	mk := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	mk(os.MkdirAll(filepath.Join(layer, "a/b c/\"q\"\n"), 0o755))
	mk(os.WriteFile(filepath.Join(layer, "a/file"), []byte("content"), 0o4751))
	mk(os.Chmod(filepath.Join(layer, "a/file"), 0o4751))
	mk(os.WriteFile(filepath.Join(layer, "a/b c/empty"), nil, 0o600))
	mk(os.WriteFile(filepath.Join(layer, "a/b c/\"q\"\n/ünï\tcode"), make([]byte, 70000), 0o644))
	mk(os.Link(filepath.Join(layer, "a/file"), filepath.Join(layer, "hardlink")))
	mk(os.Symlink("../a/b c/\"weird\"\x01target", filepath.Join(layer, "a/link")))
	mk(unix.Mkfifo(filepath.Join(layer, "fifo"), 0o640))
	mk(os.Mkdir(filepath.Join(layer, "sticky"), 0o1777))
	mk(os.Chmod(filepath.Join(layer, "sticky"), 0o1777))
	if err := unix.Lsetxattr(filepath.Join(layer, "a/file"), "user.k", []byte("v"), 0); err != nil {
		t.Logf("no user xattrs here (%v): xattr digests are \"-\" only", err)
	}
	if os.Geteuid() == 0 {
		mk(unix.Mknod(filepath.Join(layer, "whiteout"), unix.S_IFCHR, 0))
		mk(unix.Mknod(filepath.Join(layer, "dev"), unix.S_IFCHR|0o600, int(unix.Mkdev(4, 64))))
		mk(os.Lchown(filepath.Join(layer, "a/link"), 1234, 5678))
		mk(os.Chown(filepath.Join(layer, "a/b c/empty"), 65534, 1<<31))
	}
	want := referenceManifest(t, layer)

	// writeManifest, with the sums an applier would have recorded.
	sums := fileSums{}
	mk(filepath.WalkDir(layer, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		sums[fileID{uint64(st.Dev), st.Ino}] = sha256.Sum256(b)
		return err
	}))
	path := filepath.Join(dir, "m"+manifestSuffix)
	mk(writeManifest(context.Background(), layer, sums, path, time.Time{}))
	b, err := os.ReadFile(path)
	mk(err)
	got := string(b)
	exp := manifestHeader + "\n"
	for _, l := range want {
		exp += l + "\n"
	}
	if got != exp {
		t.Fatalf("manifest:\n%s\nwant (the first version's):\n%s", got, exp)
	}
	// And it verifies against itself (compareManifest's walk).
	diffs, _, err := compareManifest(context.Background(), layer, path)
	if err != nil || len(diffs) != 0 {
		t.Fatalf("compareManifest = %v, %v; want no differences", diffs, err)
	}
}

// TestApplierRecordsFileSums: the sums an applier records (hashed on the
// hasher's goroutine) are those of the files as they end up: files of
// many buffers, empty and sparse files, a file a later entry replaces,
// hard links sharing one inode; a layer that fails midway leaves the
// hasher stopped; and the manifest written from the sums verifies.
func TestApplierRecordsFileSums(t *testing.T) {
	ctx := context.Background()
	big := make([]byte, 3<<20+123) // over many 256 KiB buffers
	for i := range big {
		if (i/8192)%3 != 0 { // zero runs make holes
			big[i] = byte(i * 7)
		}
	}
	b := tartest.New().
		File("big", big).
		File("empty", nil).
		File("zeros", make([]byte, 1<<20)).
		File("replaced", []byte("first version, longer than the second")).
		File("small", []byte("x")).
		Link("hard", "small").
		File("replaced", []byte("second"))
	for i := range 300 {
		b.File(fmt.Sprintf("d/f%d", i), big[i*1000:i*1000+i*37])
	}
	dir := filepath.Join(t.TempDir(), "layer")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sums := fileSums{}
	if _, err := applyBytes(ctx, dir, b.Tar(), applyConfig{sums: sums}); err != nil {
		t.Fatal(err)
	}
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		content, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if got, ok := sums[fileID{uint64(st.Dev), st.Ino}]; !ok || got != sha256.Sum256(content) {
			t.Errorf("%s: recorded sum %x (recorded: %v), want the sha256 of its %d bytes", p, got, ok, len(content))
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != 306 {
		t.Fatalf("checked %d files, want 306", n)
	}
	path := dir + manifestSuffix
	if err := writeManifest(ctx, dir, sums, path, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if diffs, _, err := compareManifest(ctx, dir, path); err != nil || len(diffs) != 0 {
		t.Fatalf("compareManifest = %v, %v; want no differences", diffs, err)
	}

	// A stream that breaks inside a file: the layer fails, nothing hangs.
	tb := b.Tar()
	dir2 := filepath.Join(t.TempDir(), "layer")
	if err := os.Mkdir(dir2, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := applyBytes(ctx, dir2, tb[:2<<20], applyConfig{sums: fileSums{}}); err == nil {
		t.Fatal("a truncated layer applied without error")
	}
}

// TestWriteManifestAllocations: writing a manifest allocates a bounded
// few objects per entry (the walk's own: directory entries, paths for the
// syscalls), not a formatted string per field. Extraction writes one per
// layer, so this is per file of every image pulled.
func TestWriteManifestAllocations(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layer")
	sums := fileSums{}
	const files = 400
	for i := range files {
		p := filepath.Join(dir, fmt.Sprintf("d%d", i/100), fmt.Sprintf("file-%d", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte{byte(i)}, 0o644); err != nil {
			t.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		sums[fileID{uint64(st.Dev), st.Ino}] = sha256.Sum256([]byte{byte(i)})
	}
	out := filepath.Join(t.TempDir(), "m")
	allocs := testing.AllocsPerRun(3, func() {
		os.Remove(out)
		if err := writeManifest(context.Background(), dir, sums, out, time.Time{}); err != nil {
			t.Fatal(err)
		}
	})
	perEntry := allocs / (files + 5)
	t.Logf("%.0f allocations, %.1f per entry", allocs, perEntry)
	if perEntry > 8 {
		t.Errorf("writeManifest makes %.1f allocations per entry, want at most 8", perEntry)
	}
}
