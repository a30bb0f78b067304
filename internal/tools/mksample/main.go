// Command mksample pushes Strata's deterministic sample image to a registry,
// so the Quick start works offline: scripts/sample-registry.sh starts a
// local registry and runs it.
//
// The sample is a two-platform index (linux/amd64 and linux/arm64) whose
// images have three gzip layers: a small base tree, a layer with symlinks,
// a hard link, a whiteout and an opaque directory, and a layer of seeded
// pseudo-random files. The same flags always produce the same digests.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func main() {
	ref := flag.String("ref", "127.0.0.1:5055/strata/sample:latest", "where to push the sample index")
	files := flag.Int("files", 200, "number of files in the random layer")
	fileSize := flag.Int("file-size", 16<<10, "size of each random file in bytes")
	seed := flag.Int64("seed", 1, "seed for the random layer")
	flag.Parse()
	if err := run(*ref, *files, *fileSize, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "mksample:", err)
		os.Exit(1)
	}
}

func run(refStr string, files, fileSize int, seed int64) error {
	ref, err := name.ParseReference(refStr, name.Insecure)
	if err != nil {
		return err
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64", Variant: "v8"}} {
		img, err := image(p, files, fileSize, seed)
		if err != nil {
			return err
		}
		pc := p
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &pc}})
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("pushed %s@%s\n", ref, d)
	return nil
}

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func image(p v1.Platform, files, fileSize int, seed int64) (v1.Image, error) {
	base := tarLayer(func(w *tw) {
		for _, d := range []string{"bin/", "etc/", "tmp/", "usr/", "usr/share/", "var/", "var/cache/"} {
			w.dir(d, 0o755)
		}
		w.file("etc/os-release", 0o644, fmt.Sprintf("NAME=Strata sample\nPLATFORM=%s/%s\n", p.OS, p.Architecture))
		w.file("etc/hostname", 0o644, "sample\n")
		w.file("bin/hello", 0o755, "#!/bin/sh\necho hello from the strata sample\n")
		w.dir("var/cache/old/", 0o755)
		w.file("var/cache/old/stale", 0o644, "removed by an opaque directory above\n")
		w.file("tmp/scratch", 0o644, "removed by a whiteout above\n")
	})
	links := tarLayer(func(w *tw) {
		w.symlink("usr/bin", "../bin")
		w.file("usr/share/motd", 0o644, "welcome\n")
		w.hardlink("usr/share/motd.link", "usr/share/motd")
		w.file("tmp/.wh.scratch", 0o644, "")
		w.dir("var/cache/", 0o755)
		w.file("var/cache/.wh..wh..opq", 0o644, "")
		w.file("var/cache/fresh", 0o644, "new\n")
	})
	rng := rand.New(rand.NewSource(seed))
	data := tarLayer(func(w *tw) {
		w.dir("data/", 0o755)
		buf := make([]byte, fileSize)
		for i := 0; i < files; i++ {
			rng.Read(buf[:fileSize/2]) // half random, half zeros: compressible like real data
			clear(buf[fileSize/2:])
			w.file(fmt.Sprintf("data/f%05d", i), 0o644, string(buf))
		}
	})
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, raw := range [][]byte{base, links, data} {
		l, err := tarball.LayerFromOpener(opener(raw), tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
		if err != nil {
			return nil, err
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Cmd = []string{"/bin/hello"}
	return mutate.ConfigFile(img, cf)
}

type tw struct{ *tar.Writer }

func (w *tw) hdr(h *tar.Header) {
	h.ModTime, h.Format = epoch, tar.FormatPAX
	if err := w.WriteHeader(h); err != nil {
		panic(err)
	}
}
func (w *tw) dir(n string, mode int64) {
	w.hdr(&tar.Header{Typeflag: tar.TypeDir, Name: n, Mode: mode})
}
func (w *tw) file(n string, mode int64, body string) {
	w.hdr(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: mode, Size: int64(len(body))})
	if _, err := w.Write([]byte(body)); err != nil {
		panic(err)
	}
}
func (w *tw) symlink(n, target string) {
	w.hdr(&tar.Header{Typeflag: tar.TypeSymlink, Name: n, Linkname: target, Mode: 0o777})
}
func (w *tw) hardlink(n, target string) {
	w.hdr(&tar.Header{Typeflag: tar.TypeLink, Name: n, Linkname: target, Mode: 0o644})
}

func tarLayer(fill func(*tw)) []byte {
	var buf bytes.Buffer
	w := &tw{tar.NewWriter(&buf)}
	fill(w)
	if err := w.Close(); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

func opener(b []byte) tarball.Opener {
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
}
