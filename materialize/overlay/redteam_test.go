package overlay

import (
	"archive/tar"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// Red-team regression tests: extraction forms TestApplyBreakout does not
// list, each of which must stay inside the layer directory (or fail).
func TestRedteamApplyBreakoutMore(t *testing.T) {
	requireRoot(t, "more breakout forms (ownership, device nodes, xattrs)")
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	tests := []struct {
		desc    string
		build   func(s *sandbox) *tartest.Builder
		wantErr error // nil: must succeed or fail, but stay contained
	}{
		{"the root named '.' as a symlink out", func(s *sandbox) *tartest.Builder {
			return tartest.New().Header(tar.Header{Typeflag: tar.TypeSymlink, Name: ".", Linkname: s.outside}, nil).File("secret", []byte("x"))
		}, nil},
		{"the root as a hard link", func(s *sandbox) *tartest.Builder {
			return tartest.New().File("f", []byte("x")).Header(tar.Header{Typeflag: tar.TypeLink, Name: "./", Linkname: "f"}, nil)
		}, nil},
		{"a directory entry through a symlinked parent changes no mode outside", func(s *sandbox) *tartest.Builder {
			return tartest.New().Symlink("s", s.outside).Dir("s/sub", tartest.Mode(0o777), tartest.Owner(123, 456), tartest.MTime(old))
		}, nil},
		{"a hard link named through a symlinked parent", func(s *sandbox) *tartest.Builder {
			return tartest.New().File("f", []byte("x")).Symlink("s", s.outside).Link("s/newlink", "f")
		}, nil},
		{"a hard link replaces a symlink to a file outside", func(s *sandbox) *tartest.Builder {
			return tartest.New().File("f", []byte("x")).Symlink("x", s.outside+"/secret").Link("x", "f")
		}, nil},
		{"a directory's times are set after it became a symlink out", func(s *sandbox) *tartest.Builder {
			return tartest.New().Dir("d", tartest.MTime(old)).Symlink("d", s.outside, tartest.MTime(old))
		}, nil},
		{"xattrs on a file whose name is a symlink out", func(s *sandbox) *tartest.Builder {
			return tartest.New().Symlink("x", s.outside+"/secret").File("x", []byte("y"), tartest.Xattr("user.pwn", []byte("1")))
		}, nil},
		{"a device node replacing a symlink out", func(s *sandbox) *tartest.Builder {
			return tartest.New().Symlink("n", s.outside+"/secret").Char("n", 1, 3)
		}, nil},
		{"a fifo under a symlinked parent", func(s *sandbox) *tartest.Builder {
			return tartest.New().Symlink("s", s.outside+"/sub").FIFO("s/fifo")
		}, nil},
		{"the opaque marker of the root", func(s *sandbox) *tartest.Builder {
			return tartest.New().Symlink("s", s.outside).Opaque(".").Opaque("s")
		}, nil},
		{"a whiteout named through dot-dot inside a symlinked parent", func(s *sandbox) *tartest.Builder {
			return tartest.New().Symlink("s", s.outside+"/sub").Whiteout("s/../secret")
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			s := newSandbox(t)
			var before unix.Stat_t
			if err := unix.Stat(s.outside, &before); err != nil {
				t.Fatal(err)
			}
			_, err := applyBytes(context.Background(), s.layer, tc.build(s).Tar(), applyConfig{privileged: true, maxBytes: 1 << 30})
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			s.check(t)
			var after unix.Stat_t
			if err := unix.Stat(s.outside, &after); err != nil {
				t.Fatal(err)
			}
			if after.Mtim != before.Mtim || after.Mode != before.Mode || after.Uid != before.Uid {
				t.Errorf("the directory beside the layer changed: mode %o->%o uid %d->%d mtime %v->%v",
					before.Mode, after.Mode, before.Uid, after.Uid, before.Mtim, after.Mtim)
			}
			for _, p := range []string{filepath.Join(s.outside, "secret"), filepath.Join(s.outside, "sub")} {
				if n, _ := unix.Llistxattr(p, make([]byte, 256)); n > 0 {
					t.Errorf("xattrs set on %s", p)
				}
			}
			if fi, err := os.Lstat(s.layer); err != nil || !fi.IsDir() {
				t.Errorf("the layer root is no longer a directory: %v, %v", fi.Mode(), err)
			}
		})
	}
}
