package overlay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// manySmall adds n small files under dir: enough to keep the applier's
// workers busy while the entries after them are read.
func manySmall(b *tartest.Builder, dir string, n int) *tartest.Builder {
	for i := range n {
		b.File(fmt.Sprintf("%s/f%d", dir, i), tartest.Content(fmt.Sprint(i), 100+i%3000))
	}
	return b
}

// TestWorkersKeepEntryOrder: small files are written by the applier's
// workers while it reads on, and what a later entry does to them, or to
// their directory, still happens after they are written, as if every
// entry were applied in order.
func TestWorkersKeepEntryOrder(t *testing.T) {
	requireRoot(t, "owners and setgid directories")
	later := tartest.Epoch.Add(time.Hour)
	tests := []struct {
		desc  string
		layer *tartest.Builder
		check func(t *testing.T, dir string)
	}{
		{
			desc: "a hard link to the last of many small files gets it, and its metadata stays the link's",
			layer: manySmall(tartest.New().Dir("d"), "d", 300).
				Link("d/link", "d/f299", tartest.Mode(0o700), tartest.Owner(7, 8), tartest.MTime(later)),
			check: func(t *testing.T, dir string) {
				var f, l unix.Stat_t
				if err := unix.Lstat(filepath.Join(dir, "d/f299"), &f); err != nil {
					t.Fatal(err)
				}
				if err := unix.Lstat(filepath.Join(dir, "d/link"), &l); err != nil {
					t.Fatal(err)
				}
				if f.Ino != l.Ino || f.Nlink != 2 {
					t.Fatalf("d/link is inode %d, d/f299 inode %d with %d links; want one inode with 2", l.Ino, f.Ino, f.Nlink)
				}
				if f.Mode&0o7777 != 0o700 || f.Uid != 7 || f.Gid != 8 || f.Mtim.Sec != later.Unix() {
					t.Errorf("inode has mode %o owner %d:%d mtime %d; want the link header's 0700 7:8 %d", f.Mode&0o7777, f.Uid, f.Gid, f.Mtim.Sec, later.Unix())
				}
				if f.Size != int64(100+299%3000) {
					t.Errorf("d/f299 has %d bytes, want %d", f.Size, 100+299%3000)
				}
			},
		},
		{
			desc: "a later header of a directory making it setgid of another group does not change its earlier files' group",
			layer: manySmall(tartest.New().Dir("d"), "d", 300).
				Dir("d", tartest.Mode(0o2755), tartest.Owner(0, 5)),
			check: func(t *testing.T, dir string) {
				var d unix.Stat_t
				if err := unix.Lstat(filepath.Join(dir, "d"), &d); err != nil {
					t.Fatal(err)
				}
				if d.Mode&0o7777 != 0o2755 || d.Gid != 5 {
					t.Fatalf("d: mode %o group %d, want 2755 and 5", d.Mode&0o7777, d.Gid)
				}
				for i := range 300 {
					var st unix.Stat_t
					if err := unix.Lstat(filepath.Join(dir, fmt.Sprintf("d/f%d", i)), &st); err != nil {
						t.Fatal(err)
					}
					if st.Gid != 0 {
						t.Fatalf("d/f%d has group %d, want 0 (its header's; the directory became setgid after it)", i, st.Gid)
					}
				}
			},
		},
		{
			desc: "a later header of the root making it setgid of another group does not change its earlier files' group",
			layer: manySmall(tartest.New().Dir("."), ".", 300).
				Dir(".", tartest.Mode(0o2755), tartest.Owner(0, 5)),
			check: func(t *testing.T, dir string) {
				for i := range 300 {
					var st unix.Stat_t
					if err := unix.Lstat(filepath.Join(dir, fmt.Sprintf("f%d", i)), &st); err != nil {
						t.Fatal(err)
					}
					if st.Gid != 0 {
						t.Fatalf("f%d has group %d, want 0", i, st.Gid)
					}
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			s := newSandbox(t)
			umask, known := processUmask()
			if _, err := applyBytes(context.Background(), s.layer, tc.layer.Tar(), applyConfig{privileged: true, umask: umask, umaskKnown: known}); err != nil {
				t.Fatal(err)
			}
			tc.check(t, s.layer)
			s.check(t)
		})
	}
}

// TestWorkerFailureStopsLayer: a write the budget refuses in a worker
// fails the layer with that error, and nothing is written once
// applyLayer has returned (every write is charged first).
func TestWorkerFailureStopsLayer(t *testing.T) {
	for _, failAt := range []int64{1, 20_000, 100_000} {
		t.Run(fmt.Sprint(failAt), func(t *testing.T) {
			s := newSandbox(t)
			errFull := errors.New("budget full")
			var returned atomic.Bool
			var spent, late atomic.Int64
			charge := func(n int64) error {
				if returned.Load() {
					late.Add(1)
				}
				if spent.Add(n) > failAt {
					return errFull
				}
				return nil
			}
			layer := manySmall(tartest.New().Dir("d"), "d", 500).Tar()
			_, err := applyBytes(context.Background(), s.layer, layer, applyConfig{charge: charge})
			returned.Store(true)
			if !errors.Is(err, errFull) {
				t.Fatalf("err = %v, want the budget's", err)
			}
			if !strings.Contains(err.Error(), `entry "d/f`) {
				t.Errorf("err = %v, want it to name the entry", err)
			}
			// Writes after the return would show up as charges; give any
			// straggler a moment to make one.
			time.Sleep(50 * time.Millisecond)
			if n := late.Load(); n > 0 {
				t.Errorf("%d writes charged after applyLayer returned", n)
			}
			s.check(t)
		})
	}
}

// posixACL returns a system.posix_acl_* value granting the owner rwx and
// the group and others nothing.
func posixACL() []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2) // POSIX_ACL_XATTR_VERSION
	for _, e := range []struct{ tag, perm uint16 }{{0x01, 7}, {0x04, 0}, {0x20, 0}} {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, 0xffffffff)
	}
	return b
}

// TestDefaultACLDoesNotNarrowModes: in a directory the layer gives a
// default ACL, new files and directories take their mode from the ACL, not
// the umask; they still end up with the modes of their headers.
func TestDefaultACLDoesNotNarrowModes(t *testing.T) {
	probe := t.TempDir()
	if err := unix.Setxattr(probe, "system.posix_acl_default", posixACL(), 0); err != nil {
		t.Skipf("no POSIX ACLs on the temporary directory's file system: %v", err)
	}
	s := newSandbox(t)
	umask, known := processUmask()
	layer := tartest.New().Dir("d", tartest.Xattr("system.posix_acl_default", posixACL())).
		File("d/small", []byte("x"), tartest.Mode(0o644)).
		File("d/big", make([]byte, 2*smallFile), tartest.Mode(0o644)).
		Dir("d/sub", tartest.Mode(0o755)).
		File("d/sub/f", []byte("y"), tartest.Mode(0o755))
	if _, err := applyBytes(context.Background(), s.layer, layer.Tar(), applyConfig{privileged: os.Geteuid() == 0, umask: umask, umaskKnown: known}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]uint32{"d/small": 0o644, "d/big": 0o644, "d/sub": 0o755, "d/sub/f": 0o755} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(s.layer, name), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&0o7777 != want {
			t.Errorf("%s: mode %04o, want %04o", name, st.Mode&0o7777, want)
		}
	}
	s.check(t)
}

// TestSmallFileImage: the benchmarks' Debian-like image (thousands of
// small files, most written by the applier's workers, with symlinks, hard
// links, whiteouts and an opaque directory) mounts as the flattened image,
// and every layer verifies against the manifest written at extraction.
func TestSmallFileImage(t *testing.T) {
	requireRoot(t, "mount -t overlay")
	si := getSmallFileImage(t)
	m := newMaterializer(t, Config{})
	res, err := m.Materialize(context.Background(), si.mimg)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Lease.Release()
	img := tartest.Image(t, si.layers...)
	want, err := tartest.Expected(img)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tartest.Snapshot(mount(t, res))
	if err != nil {
		t.Fatal(err)
	}
	if d := tartest.Diff(want, got); d != nil {
		if len(d) > 20 {
			d = append(d[:20], fmt.Sprintf("and %d more", len(d)-20))
		}
		t.Errorf("merged tree differs from the flattened image:\n%s", strings.Join(d, "\n"))
	}
	files := 0
	for _, n := range got {
		if n.Type == tartest.TypeFile {
			files++
		}
	}
	if files < si.files/2 {
		t.Errorf("%d regular files in the merged tree, want most of the image's %d", files, si.files)
	}
	for _, l := range si.mimg.Layers() {
		c, err := m.Verify(context.Background(), l.Digest(), false)
		if err != nil || c.Status != LayerOK {
			t.Errorf("Verify(%s) = %+v, %v; want %s", l.Digest(), c, err, LayerOK)
		}
	}
}
