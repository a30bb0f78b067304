package tartest

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Fixture is one test image of the shared fidelity set.
type Fixture struct {
	// Name is short and usable as a subtest name.
	Name string
	// Description says what the fixture exercises.
	Description string
	// Layers are the layer blobs, bottom first.
	Layers [][]byte
	// MediaTypes, when set, gives each layer's media type; otherwise
	// MediaTypeOf guesses it.
	MediaTypes []types.MediaType
}

// Image returns the fixture as an OCI image.
func (f Fixture) Image(t testing.TB) v1.Image {
	t.Helper()
	ls := make([]v1.Layer, len(f.Layers))
	for i, b := range f.Layers {
		mt := MediaTypeOf(b)
		if i < len(f.MediaTypes) && f.MediaTypes[i] != "" {
			mt = f.MediaTypes[i]
		}
		l, err := NewLayer(b, mt)
		if err != nil {
			t.Fatalf("fixture %s: layer %d: %v", f.Name, i, err)
		}
		ls[i] = l
	}
	return ImageOf(t, ls...)
}

// Content returns n deterministic pseudo-random bytes derived from seed.
func Content(seed string, n int) []byte {
	out := make([]byte, 0, n+sha256.Size)
	var ctr [8]byte
	for i := uint64(0); len(out) < n; i++ {
		binary.LittleEndian.PutUint64(ctr[:], i)
		h := sha256.New()
		h.Write([]byte(seed))
		h.Write(ctr[:])
		out = h.Sum(out)
	}
	return out[:n]
}

// Fixtures returns the shared fidelity set: images covering every entry
// type, mode bits, ownership, xattrs, and the whiteout and replacement cases
// overlay layers must get right. Every fixture stays within what the
// reference flattening (Expected) models; see Expected for its limits.
func Fixtures() []Fixture {
	old := time.Unix(1_000_000_000, 0)
	longDir := "opt/" + strings.Repeat("a-rather-long-directory-name/", 5)

	allTypes := New().
		Dir("etc").
		File("etc/hostname", []byte("strata\n"), MTime(old)).
		Link("etc/hostname.link", "etc/hostname").
		File("etc/shadow", []byte("root:*:1::::::\n"), Mode(0o640), Owner(0, 42)).
		Symlink("etc/localtime", "/usr/share/zoneinfo/UTC").
		Dir("usr").Dir("usr/bin").Dir("usr/lib", Mode(0o700)).
		File("usr/bin/setuid", []byte("#!/bin/true\n"), Mode(0o4755)).
		Link("usr/bin/setuid.link", "usr/bin/setuid").
		File("usr/bin/setgid", []byte("sg"), Mode(0o2755), Owner(0, 50)).
		File("usr/bin/suid-user", []byte("su"), Mode(0o6750), Owner(1000, 1000)).
		File("usr/bin/ping", []byte("ping"), Mode(0o755), Xattr("security.capability", Capability(1<<13))).
		Symlink("usr/bin/sh", "dash", MTime(old)).
		Symlink("lib", "usr/lib").
		Dir("tmp", Mode(0o1777)).
		Dir("srv", Mode(0o2775), Owner(1000, 1000)).
		File("srv/root-owned", []byte("in a setgid dir"), Owner(0, 0)).
		File("srv/inherits", []byte("gid as the dir"), Owner(0, 1000)).
		Dir("home", Mode(0o755)).
		Dir("home/user", Mode(0o750), Owner(1000, 1001)).
		File("home/user/.profile", []byte("export PS1\n"), Owner(1000, 1001), Mode(0o600)).
		Dir("data", Xattr("user.dir", []byte("yes"))).
		File("data/xattrs", []byte("x"), Xattr("user.comment", []byte("hello")), Xattr("user.bin", []byte{0, 1, 2, 255})).
		File("data/empty", nil, Mode(0o600)).
		File("data/big", Content("big", 1<<20+17)).
		Dir("dev").
		Char("dev/null", 1, 3, Mode(0o666)).
		Block("dev/loop0", 7, 0, Mode(0o660), Owner(0, 6)).
		Dir("run").
		FIFO("run/fifo", Mode(0o620)).
		Dir(longDir).
		File(longDir+"file-with-a-long-path.txt", []byte("long")).
		File("opt/ünïcødé ✓.txt", []byte("unicode")).
		Header(tar.Header{Typeflag: tar.TypeDir, Name: "./var/", Mode: 0o755, ModTime: Epoch}, nil).
		Header(tar.Header{Typeflag: tar.TypeReg, Name: "./var/dotslash", Mode: 0o644, ModTime: Epoch}, []byte("dot")).
		Gzip()

	return []Fixture{
		{
			Name:        "all-types",
			Description: "one gzip layer with every entry type, special mode bits, owners, mtimes, xattrs, long and unicode names, ./ prefixes",
			Layers:      [][]byte{allTypes},
		},
		{
			Name:        "whiteout-file",
			Description: "a layer deletes files (and whiteouts a name that never existed) and adds one",
			Layers: [][]byte{
				New().Dir("a").File("a/keep", []byte("keep")).File("a/gone", []byte("gone")).
					File("top-gone", []byte("x")).Symlink("link-gone", "a/keep").Gzip(),
				New().Dir("a").Whiteout("a/gone").Whiteout("top-gone").Whiteout("link-gone").
					Whiteout("a/never").File("a/new", []byte("new")).Gzip(),
			},
		},
		{
			Name:        "delete-dir",
			Description: "a layer deletes a whole directory tree; a later layer recreates the name with new content",
			Layers: [][]byte{
				New().Dir("d").Dir("d/sub").File("d/sub/file", []byte("f")).File("d/x", []byte("x")).
					Dir("e").File("e/stays", []byte("s")).Dir("r").File("r/old", []byte("old")).Gzip(),
				New().Whiteout("d").Whiteout("r").Gzip(),
				New().Dir("r", Mode(0o700)).File("r/new", []byte("new")).Gzip(),
			},
		},
		{
			Name:        "opaque-dir",
			Description: "a layer makes a directory opaque (hiding what lower layers hold under it) and adds an entry",
			Layers: [][]byte{
				New().Dir("o").File("o/a", []byte("a")).Dir("o/sub").File("o/sub/c", []byte("c")).
					Dir("p").File("p/lower", []byte("l")).Gzip(),
				New().Dir("o", Mode(0o750), Owner(0, 10)).Opaque("o").File("o/new", []byte("new")).
					Dir("p").File("p/upper", []byte("u")).Gzip(),
			},
		},
		{
			Name:        "hardlinks",
			Description: "hard links within one layer; a later layer deletes one target and replaces another",
			Layers: [][]byte{
				New().File("t", []byte("target content"), Mode(0o640), Owner(3, 4)).Link("h", "t").
					File("u", []byte("old u")).Link("hu", "u").
					Dir("sub").File("sub/f", []byte("f")).Link("sub/g", "sub/f").Link("sub/g2", "sub/g").Gzip(),
				New().Whiteout("t").File("u", []byte("new u, different")).Gzip(),
			},
		},
		{
			Name:        "type-changes",
			Description: "a file replaced by a directory and back; a directory, a symlink and a FIFO replaced by files",
			Layers: [][]byte{
				New().File("x", []byte("file 1")).Dir("y").File("y/c", []byte("c")).
					Symlink("s", "x").FIFO("p").Gzip(),
				New().Dir("x").File("x/child", []byte("child")).File("y", []byte("now a file")).
					File("s", []byte("was a symlink")).Dir("p").Gzip(),
				New().File("x", []byte("file 3"), Mode(0o600)).Gzip(),
			},
		},
		{
			Name:        "missing-parents",
			Description: "entries whose parent directories no layer declares",
			Layers: [][]byte{
				New().File("p/q/r/file", []byte("deep")).Symlink("s/t/link", "../x").Gzip(),
				New().File("p/q/other", []byte("o")).Gzip(),
			},
		},
		{
			Name:        "compressions",
			Description: "zstd, uncompressed and Docker-typed gzip layers in one image",
			Layers: [][]byte{
				New().Dir("z").File("z/zstd", Content("z", 70_000)).Zstd(),
				New().Dir("u").File("u/plain", []byte("plain")).Tar(),
				New().Dir("g").File("g/docker", []byte("docker")).Gzip(),
			},
			MediaTypes: []types.MediaType{"", "", types.DockerLayer},
		},
	}
}
