// Package tartest builds layer tarballs, test images and the fixture set the
// materializers' fidelity tests share, and snapshots and compares file trees.
//
// It is test support: functions that take a testing.TB fail the test on
// error instead of returning one.
package tartest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"path"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Epoch is the default modification time of every entry a Builder writes.
var Epoch = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

// Whiteout markers as OCI layers spell them.
const (
	WhiteoutPrefix = ".wh."
	OpaqueMarker   = ".wh..wh..opq"
)

// Option changes an entry's header.
type Option func(*tar.Header)

// Mode sets the permission and special bits (setuid 04000, setgid 02000,
// sticky 01000 included).
func Mode(m int64) Option { return func(h *tar.Header) { h.Mode = m } }

// Owner sets uid and gid.
func Owner(uid, gid int) Option { return func(h *tar.Header) { h.Uid, h.Gid = uid, gid } }

// MTime sets the modification time.
func MTime(t time.Time) Option { return func(h *tar.Header) { h.ModTime = t } }

// Xattr adds an extended attribute as a PAX record (SCHILY.xattr.<name>).
func Xattr(name string, value []byte) Option {
	return PAX("SCHILY.xattr."+name, string(value))
}

// PAX adds a raw PAX record.
func PAX(key, value string) Option {
	return func(h *tar.Header) {
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords[key] = value
		h.Format = tar.FormatPAX
	}
}

// Capability returns a valid VFS_CAP_REVISION_2 security.capability value
// granting the given permitted capability bits (for example 1<<10,
// CAP_NET_BIND_SERVICE) with the effective flag set.
func Capability(permitted uint64) []byte {
	b := make([]byte, 20)
	le32 := func(off int, v uint32) {
		b[off], b[off+1], b[off+2], b[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	le32(0, 0x02000000|0x000001) // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
	le32(4, uint32(permitted))
	le32(8, 0)
	le32(12, uint32(permitted>>32))
	le32(16, 0)
	return b
}

type entry struct {
	hdr  *tar.Header
	data []byte
}

// Builder accumulates tar entries in order. Its methods append one entry
// each and return the Builder for chaining. Defaults: uid/gid 0, mtime
// Epoch, mode 0644 for files, 0755 for directories, 0777 for symlinks, 0600
// for devices and FIFOs. A Builder is not safe for concurrent use.
type Builder struct {
	entries []entry
}

// New returns an empty Builder.
func New() *Builder { return &Builder{} }

func (b *Builder) add(h *tar.Header, data []byte, opts []Option) *Builder {
	if h.ModTime.IsZero() {
		h.ModTime = Epoch
	}
	for _, o := range opts {
		o(h)
	}
	if h.Typeflag == tar.TypeReg {
		h.Size = int64(len(data))
	}
	b.entries = append(b.entries, entry{hdr: h, data: data})
	return b
}

// File adds a regular file.
func (b *Builder) File(name string, content []byte, opts ...Option) *Builder {
	return b.add(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, content, opts)
}

// Dir adds a directory.
func (b *Builder) Dir(name string, opts ...Option) *Builder {
	return b.add(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}, nil, opts)
}

// Symlink adds a symbolic link name -> target.
func (b *Builder) Symlink(name, target string, opts ...Option) *Builder {
	return b.add(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}, nil, opts)
}

// Link adds a hard link name -> target. Unless opts say otherwise, it
// carries the metadata (mode, owner, mtime, xattrs) of the last entry named
// target in this Builder, as tar writers record it.
func (b *Builder) Link(name, target string, opts ...Option) *Builder {
	h := &tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644}
	for i := len(b.entries) - 1; i >= 0; i-- {
		t := b.entries[i].hdr
		if path.Clean(t.Name) == path.Clean(target) {
			h.Mode, h.Uid, h.Gid, h.ModTime = t.Mode, t.Uid, t.Gid, t.ModTime
			for k, v := range t.PAXRecords {
				PAX(k, v)(h)
			}
			break
		}
	}
	return b.add(h, nil, opts)
}

// Char adds a character device.
func (b *Builder) Char(name string, major, minor int64, opts ...Option) *Builder {
	return b.add(&tar.Header{Typeflag: tar.TypeChar, Name: name, Devmajor: major, Devminor: minor, Mode: 0o600}, nil, opts)
}

// Block adds a block device.
func (b *Builder) Block(name string, major, minor int64, opts ...Option) *Builder {
	return b.add(&tar.Header{Typeflag: tar.TypeBlock, Name: name, Devmajor: major, Devminor: minor, Mode: 0o600}, nil, opts)
}

// FIFO adds a named pipe.
func (b *Builder) FIFO(name string, opts ...Option) *Builder {
	return b.add(&tar.Header{Typeflag: tar.TypeFifo, Name: name, Mode: 0o600}, nil, opts)
}

// Whiteout adds the OCI whiteout for name (an empty file dir/.wh.base),
// which deletes name from the layers below.
func (b *Builder) Whiteout(name string) *Builder {
	dir, base := path.Split(name)
	return b.add(&tar.Header{Typeflag: tar.TypeReg, Name: dir + WhiteoutPrefix + base, Mode: 0o644}, nil, nil)
}

// Opaque adds the OCI opaque marker dir/.wh..wh..opq, which hides
// everything the layers below hold under dir.
func (b *Builder) Opaque(dir string) *Builder {
	return b.add(&tar.Header{Typeflag: tar.TypeReg, Name: path.Join(dir, OpaqueMarker), Mode: 0o644}, nil, nil)
}

// Header adds a raw entry: hdr is written as given (absolute names, ".."
// and duplicate names included); data is the entry's content, and Size is
// set from it for regular files when hdr.Size is 0.
func (b *Builder) Header(hdr tar.Header, data []byte) *Builder {
	h := hdr
	if h.Size == 0 && len(data) > 0 {
		h.Size = int64(len(data))
	}
	b.entries = append(b.entries, entry{hdr: &h, data: data})
	return b
}

// Tar returns the uncompressed layer. It panics only if an entry cannot be
// encoded by archive/tar (a Builder misuse, never bad data).
func (b *Builder) Tar() []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range b.entries {
		h := *e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			panic(fmt.Sprintf("tartest: entry %q: %v", h.Name, err))
		}
		if len(e.data) > 0 {
			if _, err := tw.Write(e.data); err != nil {
				panic(fmt.Sprintf("tartest: entry %q: %v", h.Name, err))
			}
		}
	}
	if err := tw.Close(); err != nil {
		panic(fmt.Sprintf("tartest: %v", err))
	}
	return buf.Bytes()
}

// Gzip returns the layer compressed with gzip.
func (b *Builder) Gzip() []byte { return GzipBytes(b.Tar()) }

// Zstd returns the layer compressed with zstd.
func (b *Builder) Zstd() []byte { return ZstdBytes(b.Tar()) }

// GzipBytes compresses p with gzip.
func GzipBytes(p []byte) []byte {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	zw.Write(p)
	zw.Close()
	return buf.Bytes()
}

// ZstdBytes compresses p with zstd.
func ZstdBytes(p []byte) []byte {
	zw, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		panic(fmt.Sprintf("tartest: zstd: %v", err))
	}
	defer zw.Close()
	return zw.EncodeAll(p, nil)
}
