// Package synth generates reproducible synthetic OCI images for the
// benchmark harness and pushes them to a registry.
//
// An image is a pure function of its Spec: the same Spec (seed included)
// always gives the same layer bytes, hence the same digests. Layers are
// written to files in a work directory as they are generated (tar, then gzip
// or zstd), hashing on the way, so generating a 512 MiB image holds no layer
// in memory.
package synth

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"
)

// Compression names a layer compression.
const (
	Gzip = "gzip"
	Zstd = "zstd"
)

// Spec describes a synthetic image.
type Spec struct {
	// Name is the repository path under the registry ("bench/big").
	Name string `json:"name"`
	// Seed makes the content reproducible.
	Seed uint64 `json:"seed"`
	// Layers is the number of layers (at least 1).
	Layers int `json:"layers"`
	// LayerBytes is the file content per layer, uncompressed.
	LayerBytes int64 `json:"layer_bytes"`
	// FilesPerLayer is the number of regular files per layer; sizes vary
	// around LayerBytes/FilesPerLayer and add up to LayerBytes.
	FilesPerLayer int `json:"files_per_layer"`
	// Compressibility is the fraction (0..1) of each file that is a
	// repeated text pattern; the rest is pseudo-random.
	Compressibility float64 `json:"compressibility"`
	// Compression is Gzip or Zstd.
	Compression string `json:"compression"`
	// Whiteouts is how many files of the layer below each upper layer
	// deletes (OCI whiteouts); every upper layer also rewrites a few shared
	// files and holds a symlink and a hard link.
	Whiteouts int `json:"whiteouts"`
	// Profile shapes the layers: "" (Uniform) gives FilesPerLayer files of
	// about LayerBytes/FilesPerLayer bytes in flat directories of 256;
	// Debian gives a root filesystem like a Debian-based image's (see
	// debianTree), where LayerBytes is ignored.
	Profile string `json:"profile,omitempty"`
}

// Profiles (Spec.Profile).
const (
	Uniform = ""
	// Debian: FilesPerLayer*Layers regular files, 60% of them in the
	// first layer (the base system) and the rest spread over the upper
	// ones; sizes drawn like a Debian root filesystem's (60% under 4 KiB,
	// 28% 4-32 KiB, 10% 32-128 KiB, 1.9% 128 KiB-1 MiB, 0.1% 1-4 MiB);
	// about one directory per 8 files, nested up to 6 deep under the
	// usual top directories; a symlink per 10 files; a few hard links;
	// every layer rewrites var/lib/dpkg/status.
	Debian = "debian"
)

// Validate reports a Spec the generator cannot build.
func (s Spec) Validate() error {
	switch {
	case s.Name == "":
		return errors.New("synth: empty image name")
	case s.Layers < 1 || s.Layers > 128:
		return fmt.Errorf("synth: %d layers (want 1..128)", s.Layers)
	case s.FilesPerLayer < 1:
		return fmt.Errorf("synth: %d files per layer (want >= 1)", s.FilesPerLayer)
	case s.Profile != Uniform && s.Profile != Debian:
		return fmt.Errorf("synth: profile %q (want %q or %q)", s.Profile, Uniform, Debian)
	case s.Profile == Uniform && s.LayerBytes < int64(s.FilesPerLayer):
		return fmt.Errorf("synth: %d bytes per layer for %d files", s.LayerBytes, s.FilesPerLayer)
	case s.Compressibility < 0 || s.Compressibility > 1:
		return fmt.Errorf("synth: compressibility %v (want 0..1)", s.Compressibility)
	case s.Compression != Gzip && s.Compression != Zstd:
		return fmt.Errorf("synth: compression %q (want gzip or zstd)", s.Compression)
	case s.Whiteouts < 0 || s.Whiteouts > s.FilesPerLayer:
		return fmt.Errorf("synth: %d whiteouts for %d files", s.Whiteouts, s.FilesPerLayer)
	}
	return nil
}

// Image is a generated image, its layers in files.
type Image struct {
	Spec Spec
	// Img is the image; its layers read the files under the work directory.
	Img v1.Image
	// Digest is the manifest digest.
	Digest string
	// UncompressedBytes is the total size of the layer tars.
	UncompressedBytes int64
	// CompressedBytes is the total size of the layer blobs.
	CompressedBytes int64
	// Files is the number of regular files over all layers (before
	// whiteouts and shadowing).
	Files int
	// Entries is the number of tar entries over all layers.
	Entries int
}

var epoch = time.Unix(1_700_000_000, 0).UTC()

// Generate builds the image of spec, writing its layers under dir (created
// if missing; the caller removes it). Layers are generated in parallel.
func Generate(ctx context.Context, spec Spec, dir string) (*Image, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	layers := make([]*fileLayer, spec.Layers)
	stats := make([]layerStats, spec.Layers)
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(2)
	for i := range spec.Layers {
		g.Go(func() error {
			l, st, err := writeLayer(ctx, spec, i, filepath.Join(dir, fmt.Sprintf("%s-layer%d", sanitize(spec.Name), i)))
			layers[i], stats[i] = l, st
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	base, err := mutate.ConfigFile(mutate.MediaType(empty.Image, types.OCIManifestSchema1), &v1.ConfigFile{
		Architecture: "amd64",
		OS:           "linux",
		Created:      v1.Time{Time: epoch},
		RootFS:       v1.RootFS{Type: "layers"},
		Config:       v1.Config{Cmd: []string{"/bin/true"}},
	})
	if err != nil {
		return nil, err
	}
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	adds := make([]mutate.Addendum, len(layers))
	out := &Image{Spec: spec}
	for i, l := range layers {
		adds[i] = mutate.Addendum{Layer: l, MediaType: l.mediaType, History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: fmt.Sprintf("synth layer %d", i)}}
		out.UncompressedBytes += stats[i].tarBytes
		out.CompressedBytes += l.size
		out.Files += stats[i].files
		out.Entries += stats[i].entries
	}
	img, err := mutate.Append(base, adds...)
	if err != nil {
		return nil, err
	}
	d, err := img.Digest()
	if err != nil {
		return nil, err
	}
	out.Img, out.Digest = img, d.String()
	return out, nil
}

// Push writes img to host (a loopback "127.0.0.1:port", plain HTTP) as
// Name:tag and returns the reference pushed.
func Push(ctx context.Context, host string, img *Image, tag string) (string, error) {
	ref := fmt.Sprintf("%s/%s:%s", host, img.Spec.Name, tag)
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return "", err
	}
	if err := remote.Write(r, img.Img, remote.WithContext(ctx), remote.WithJobs(2)); err != nil {
		return "", fmt.Errorf("synth: push %s: %w", ref, err)
	}
	return ref, nil
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			b[i] = '_'
		}
	}
	return string(b)
}

type layerStats struct {
	tarBytes int64
	files    int
	entries  int
}

// countingHash counts and hashes what is written through it.
type countingHash struct {
	h hash.Hash
	n int64
}

func (c *countingHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}

func writeLayer(ctx context.Context, spec Spec, idx int, path string) (*fileLayer, layerStats, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, layerStats{}, err
	}
	defer f.Close()
	blobHash := &countingHash{h: sha256.New()}
	diffHash := &countingHash{h: sha256.New()}
	var comp io.WriteCloser
	mt := types.OCILayer
	switch spec.Compression {
	case Gzip:
		comp, err = gzip.NewWriterLevel(io.MultiWriter(f, blobHash), gzip.BestSpeed)
	case Zstd:
		mt = types.OCILayerZStd
		comp, err = zstd.NewWriter(io.MultiWriter(f, blobHash), zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	}
	if err != nil {
		return nil, layerStats{}, err
	}
	tw := tar.NewWriter(io.MultiWriter(comp, diffHash))
	st, err := writeTar(ctx, tw, spec, idx)
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = comp.Close()
	}
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		return nil, st, fmt.Errorf("synth: layer %d: %w", idx, err)
	}
	st.tarBytes = diffHash.n
	l := &fileLayer{
		path:      path,
		mediaType: mt,
		size:      blobHash.n,
		digest:    v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(blobHash.h.Sum(nil))},
		diffID:    v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(diffHash.h.Sum(nil))},
	}
	return l, st, nil
}

// pattern is the compressible part of every file.
var pattern = bytes.Repeat([]byte("strata synthetic benchmark content, compressible part. "), 64)

func writeTar(ctx context.Context, tw *tar.Writer, spec Spec, idx int) (layerStats, error) {
	if spec.Profile == Debian {
		return writeDebianTar(ctx, tw, spec, idx)
	}
	var st layerStats
	var key [32]byte
	for i := range 8 {
		key[i] = byte(spec.Seed >> (8 * i))
	}
	key[8], key[9] = byte(idx), byte(idx>>8)
	src := rand.NewChaCha8(key)
	rng := rand.New(rand.NewPCG(spec.Seed, uint64(idx)+1))
	dir := func(name string) error {
		st.entries++
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755, ModTime: epoch})
	}
	buf := make([]byte, 0, 1<<20)
	file := func(name string, n int64) error {
		st.entries++
		st.files++
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: n, ModTime: epoch}); err != nil {
			return err
		}
		for n > 0 {
			c := min(n, int64(cap(buf)))
			buf = buf[:c]
			rnd := int64(float64(c) * (1 - spec.Compressibility))
			src.Read(buf[:rnd])
			for off := rnd; off < c; off += int64(copy(buf[off:], pattern)) {
			}
			if _, err := tw.Write(buf); err != nil {
				return err
			}
			n -= c
		}
		return nil
	}
	top := fmt.Sprintf("l%d", idx)
	if err := dir(top); err != nil {
		return st, err
	}
	if err := dir("common"); err != nil {
		return st, err
	}
	// Every layer rewrites the same shared files (upper ones shadow lower).
	const shared = 4
	extra := int64(shared * 1024)
	for j := range shared {
		if err := file(fmt.Sprintf("common/c%d", j), 1024); err != nil {
			return st, err
		}
	}
	n := spec.FilesPerLayer - shared
	budget := spec.LayerBytes - extra
	if n < 1 {
		n, budget = 1, max(1, spec.LayerBytes-extra)
	}
	avg := budget / int64(n)
	var written int64
	for i := range n {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return st, err
			}
			if err := dir(fmt.Sprintf("%s/d%d", top, i/256)); err != nil {
				return st, err
			}
		}
		size := avg/2 + rng.Int64N(avg+1)
		if i == n-1 || written+size > budget {
			size = max(0, budget-written)
		}
		if err := file(fmt.Sprintf("%s/d%d/f%d", top, i/256, i), size); err != nil {
			return st, err
		}
		written += size
	}
	// A symlink and a hard link to the first file.
	first := fmt.Sprintf("%s/d0/f0", top)
	st.entries += 2
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: top + "/link", Linkname: "d0/f0", Mode: 0o777, ModTime: epoch}); err != nil {
		return st, err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeLink, Name: top + "/hardlink", Linkname: first, ModTime: epoch}); err != nil {
		return st, err
	}
	// Whiteouts of files of the layer below.
	if idx > 0 {
		below := spec.FilesPerLayer - shared
		// f0 stays: it is the target of the layer's links.
		for j := 1; j <= spec.Whiteouts && j < below; j++ {
			st.entries++
			name := fmt.Sprintf("l%d/d%d/.wh.f%d", idx-1, j/256, j)
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: epoch}); err != nil {
				return st, err
			}
		}
	}
	return st, nil
}

// fileLayer is a v1.Layer whose compressed bytes are in a file.
type fileLayer struct {
	path           string
	mediaType      types.MediaType
	size           int64
	digest, diffID v1.Hash
}

func (l *fileLayer) Digest() (v1.Hash, error)             { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)             { return l.diffID, nil }
func (l *fileLayer) Size() (int64, error)                 { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error)  { return l.mediaType, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)   { return os.Open(l.path) }
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) { return openUncompressed(l) }

func openUncompressed(l *fileLayer) (io.ReadCloser, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, err
	}
	if l.mediaType == types.OCILayerZStd {
		d, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1))
		if err != nil {
			f.Close()
			return nil, err
		}
		return readCloser{Reader: d, close: func() error { d.Close(); return f.Close() }}, nil
	}
	z, err := gzip.NewReader(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return readCloser{Reader: z, close: func() error { z.Close(); return f.Close() }}, nil
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r readCloser) Close() error { return r.close() }
