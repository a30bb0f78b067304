package overlay

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// smallFileImage is a generated Debian-like image: six gzip layers, a
// large base and smaller ones on top, in all about 8k regular files (most
// under 4 KiB, a few up to 200 KiB), 1k directories, symlinks, hard links,
// whiteouts, an opaque directory, a few setuid files, files of other
// owners, and a few files with capabilities.
type smallFileImage struct {
	mimg   manifest.Image
	layers [][]byte // the gzip blobs, bottom first
	files  int
	dirs   int
	bytes  int64
}

var (
	smallOnce sync.Once
	smallImg  smallFileImage
)

// smallLayerPlan is how many directories and files each layer has.
var smallLayerPlan = []struct{ dirs, files int }{
	{620, 5000}, {180, 1400}, {90, 700}, {60, 450}, {30, 250}, {20, 150},
}

func getSmallFileImage(tb testing.TB) smallFileImage {
	smallOnce.Do(func() { smallImg = buildSmallFileImage(tb) })
	if smallImg.mimg == nil {
		tb.Fatal("small-file image not built")
	}
	return smallImg
}

func buildSmallFileImage(tb testing.TB) smallFileImage {
	rnd := tartest.Content("debian-like", 1<<20)
	// Text-like content: compresses roughly as a distribution's files do.
	words := strings.Fields("the of and to a in is that for it as with was on be by this are or from at which but not have an they you were all one their there has been if more when will would who so no can out up into its about than them only other time new some could these two may first then do any like my now over such our man me even most made after also did many before must through back years where much your way well down should because each just those people how too")
	var text []byte
	for i := 0; len(text) < 1<<20; i++ {
		text = append(text, words[(i*7919+i/13)%len(words)]...)
		if i%11 == 10 {
			text = append(text, '\n')
		} else {
			text = append(text, ' ')
		}
	}
	var out smallFileImage
	var allDirs []string // of every layer so far
	var below []string   // files of the layer below, for whiteouts
	for li, plan := range smallLayerPlan {
		// The layer's tree: directories, and the files of each.
		var dirs []string
		if li == 0 {
			dirs = append(dirs, "usr", "usr/share")
		}
		for d := len(dirs); d < plan.dirs; d++ {
			var p string
			switch {
			case li > 0 && d < 8:
				// Later layers add to directories of the layers below
				// (without a header for them, as some builders write).
				p = allDirs[(d*131+li)%len(allDirs)] + fmt.Sprintf("/l%dn%d", li, d)
			case d < 40:
				p = fmt.Sprintf("usr/share/l%dd%d", li, d)
			default:
				p = fmt.Sprintf("%s/s%d", dirs[(d*37)%len(dirs)], d)
			}
			if strings.Count(p, "/") > 7 {
				p = fmt.Sprintf("usr/l%dd%d", li, d)
			}
			dirs = append(dirs, p)
		}
		filesOf := map[string][]int{}
		for f := 0; f < plan.files; f++ {
			dir := dirs[(f*7)%len(dirs)]
			if li == 0 && f%500 == 0 {
				dir = "usr/share" // files next to directories
			}
			filesOf[dir] = append(filesOf[dir], f)
		}
		// In the order a tar writer walking the tree writes it: each
		// directory, then its files, then its subdirectories.
		sort.Strings(dirs)
		b := tartest.New()
		var files []string
		for _, dir := range dirs {
			b.Dir(dir)
			for _, f := range filesOf[dir] {
				name := fmt.Sprintf("%s/f%d.conf", dir, f)
				// Sizes: most under 4 KiB, one in 20 between 16 and 200 KiB.
				n := 64 + (f*2654435761)%3900
				if f%20 == 0 {
					n = 16<<10 + (f*40503)%(184<<10)
				}
				off := (f * 4099) % (len(text) - n)
				data := make([]byte, n)
				if f%4 == 0 {
					copy(data, rnd[off:off+n]) // binaries: incompressible
				} else {
					copy(data, text[off:off+n])
				}
				var opts []tartest.Option
				switch {
				case f%10 == 1:
					opts = append(opts, tartest.Mode(0o755))
				case f%997 == 3:
					opts = append(opts, tartest.Mode(0o4755))
				case f%211 == 5:
					opts = append(opts, tartest.Owner(100, 102), tartest.Mode(0o640))
				case f%1499 == 7:
					opts = append(opts, tartest.Xattr("security.capability", tartest.Capability(1<<13)), tartest.Mode(0o755))
				}
				b.File(name, data, opts...)
				files = append(files, name)
				out.files++
				out.bytes += int64(n)
				switch {
				case f%9 == 2:
					b.Symlink(fmt.Sprintf("%s/l%d", dir, f), path.Base(name))
				case f%13 == 4:
					b.Symlink(fmt.Sprintf("%s/a%d", dir, f), "/"+name)
				case f%97 == 6:
					b.Link(fmt.Sprintf("%s/h%d", dir, f), name)
				}
			}
		}
		if li > 0 {
			// Whiteouts of files below, and one opaque directory.
			for w := 0; w < 20 && w < len(below); w++ {
				b.Whiteout(below[(w*53)%len(below)])
			}
			b.Opaque(dirs[len(dirs)-1])
		}
		below = files
		out.dirs += len(dirs)
		allDirs = append(allDirs, dirs...)
		out.layers = append(out.layers, b.Gzip())
	}
	img := tartest.Image(tb, out.layers...)
	m, err := tartest.Adapt(img)
	if err != nil {
		tb.Fatal(err)
	}
	out.mimg = m
	return out
}

// BenchmarkSmallFiles compares, in one run, on the small-file image:
//   - extract: Materialize into a fresh root (cold, blobs in memory);
//   - floor-tar: the same layers extracted by a plain extractor
//     (archive/tar, one open/write/close per file, mkdir, symlink, link; no
//     ownership, modes, times, xattrs, whiteouts, checks or manifest), one
//     layer per core at a time;
//   - floor-harness: the floor benchmarks/internal/pipeline measures for
//     a local extraction: decompressing every layer to nowhere while
//     creating every directory and file from memory (content already
//     decompressed, no tar parsing).
//
// Set STRATA_BENCH_DIR to a directory on the file system to measure (a
// journaled ext4 for figures comparable to the harness's).
func BenchmarkSmallFiles(b *testing.B) {
	si := getSmallFileImage(b)
	b.Run("extract", func(b *testing.B) {
		extractFresh(b, benchImage{mimg: si.mimg, bytes: si.bytes, files: si.files}, Config{})
	})
	b.Run("floor-tar", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(si.bytes)
		var cpu time.Duration
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			dir := scratchDir(b)
			b.StartTimer()
			c0 := processCPU()
			if err := plainExtract(context.Background(), si.layers, dir); err != nil {
				b.Fatal(err)
			}
			cpu += processCPU() - c0
		}
		b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
	})
	b.Run("floor-harness", func(b *testing.B) {
		ls := harnessLayers(b, si.layers)
		b.ReportAllocs()
		b.SetBytes(si.bytes)
		var cpu time.Duration
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			dir := scratchDir(b)
			b.StartTimer()
			c0 := processCPU()
			var g errgroup.Group
			g.Go(func() error { return harnessDecompress(si.layers) })
			g.Go(func() error { return harnessCreate(ls, dir) })
			if err := g.Wait(); err != nil {
				b.Fatal(err)
			}
			cpu += processCPU() - c0
		}
		b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
	})
}

// plainExtract extracts each gzip layer into dir/<i> the way a plain tar
// extractor does, GOMAXPROCS layers at once.
func plainExtract(ctx context.Context, layers [][]byte, dir string) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i, l := range layers {
		g.Go(func() error {
			root := filepath.Join(dir, fmt.Sprint(i))
			if err := os.Mkdir(root, 0o755); err != nil {
				return err
			}
			zr, err := gzip.NewReader(bytes.NewReader(l))
			if err != nil {
				return err
			}
			tr := tar.NewReader(zr)
			for {
				if err := ctx.Err(); err != nil {
					return err
				}
				h, err := tr.Next()
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return err
				}
				p := filepath.Join(root, h.Name)
				switch h.Typeflag {
				case tar.TypeDir:
					if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
						if err := os.MkdirAll(p, 0o755); err != nil {
							return err
						}
					}
				case tar.TypeReg:
					f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
					if errors.Is(err, os.ErrNotExist) {
						if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
							f, err = os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
						}
					}
					if err != nil {
						return err
					}
					_, err = io.Copy(f, tr)
					if cerr := f.Close(); err == nil {
						err = cerr
					}
					if err != nil {
						return err
					}
				case tar.TypeSymlink:
					if err := os.Symlink(h.Linkname, p); err != nil {
						return err
					}
				case tar.TypeLink:
					if err := os.Link(filepath.Join(root, h.Linkname), p); err != nil {
						return err
					}
				}
			}
		})
	}
	return g.Wait()
}

// harnessLayer is a layer as benchmarks/internal/pipeline's floor sees it:
// its directories and regular files (whiteout markers left out), and the
// content to write.
type harnessLayer struct {
	names []string
	dirs  []bool
	sizes []int64
}

func harnessLayers(tb testing.TB, layers [][]byte) []harnessLayer {
	var out []harnessLayer
	for _, l := range layers {
		zr, err := gzip.NewReader(bytes.NewReader(l))
		if err != nil {
			tb.Fatal(err)
		}
		tr := tar.NewReader(zr)
		var hl harnessLayer
		seen := map[string]bool{}
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				tb.Fatal(err)
			}
			name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
			if name == "" || seen[name] {
				continue
			}
			switch h.Typeflag {
			case tar.TypeDir:
				seen[name] = true
				hl.names, hl.dirs, hl.sizes = append(hl.names, name), append(hl.dirs, true), append(hl.sizes, 0)
			case tar.TypeReg:
				if strings.HasPrefix(path.Base(name), ".wh.") {
					continue
				}
				seen[name] = true
				hl.names, hl.dirs, hl.sizes = append(hl.names, name), append(hl.dirs, false), append(hl.sizes, h.Size)
			}
		}
		out = append(out, hl)
	}
	return out
}

func harnessDecompress(layers [][]byte) error {
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for _, l := range layers {
		g.Go(func() error {
			zr, err := gzip.NewReader(bytes.NewReader(l))
			if err != nil {
				return err
			}
			_, err = io.Copy(io.Discard, zr)
			return err
		})
	}
	return g.Wait()
}

var harnessContent = tartest.Content("harness", 256<<10)

func harnessCreate(layers []harnessLayer, dir string) error {
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i, hl := range layers {
		g.Go(func() error {
			root := filepath.Join(dir, fmt.Sprint(i))
			if err := os.MkdirAll(root, 0o755); err != nil {
				return err
			}
			for j, name := range hl.names {
				p := filepath.Join(root, name)
				if hl.dirs[j] {
					if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
						if err := os.MkdirAll(p, 0o755); err != nil {
							return err
						}
					}
					continue
				}
				const flags = unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_CLOEXEC
				fd, err := unix.Open(p, flags, 0o644)
				if err == unix.ENOENT {
					if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
						return err
					}
					fd, err = unix.Open(p, flags, 0o644)
				}
				if err != nil {
					return &os.PathError{Op: "create", Path: p, Err: err}
				}
				for c := harnessContent[:hl.sizes[j]]; len(c) > 0 && err == nil; {
					var n int
					n, err = unix.Write(fd, c)
					c = c[n:]
				}
				if cerr := unix.Close(fd); err == nil {
					err = cerr
				}
				if err != nil {
					return &os.PathError{Op: "write", Path: p, Err: err}
				}
			}
			return nil
		})
	}
	return g.Wait()
}
