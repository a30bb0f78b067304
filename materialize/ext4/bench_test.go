package ext4

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/internal/layerio"
)

// fileLayer is a layer blob cached in a file, verified as it is read.
type fileLayer struct {
	path   string
	digest blob.Digest
	size   int64
}

func (l *fileLayer) Digest() blob.Digest             { return l.digest }
func (l *fileLayer) Authorize(context.Context) error { return nil }
func (l *fileLayer) MediaType() types.MediaType {
	return types.MediaType("application/vnd.oci.image.layer.v1.tar+gzip")
}
func (l *fileLayer) Size() int64 { return l.size }
func (l *fileLayer) Open(ctx context.Context) (io.ReadCloser, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, err
	}
	return blob.NewVerifier(f, l.digest, l.size, nil), nil
}

// genSpec describes one generated layer.
type genSpec struct {
	files     int
	bytes     int64
	overwrite int // files of lower layers rewritten
	whiteouts int // files of lower layers deleted
	links     int // hard links to files of this layer
}

// genImage writes a deterministic multi-layer gzip image into dir and
// returns it with its uncompressed size and file count.
func genImage(tb testing.TB, dir string, seed uint64, specs []genSpec) (*testImage, int64, int) {
	tb.Helper()
	rng := rand.New(rand.NewPCG(seed, 42))
	content := rand.NewChaCha8([32]byte{byte(seed)})
	var lower []string // files of lower layers
	img := &testImage{}
	var total int64
	files := 0
	buf := make([]byte, 4<<20)
	for li, s := range specs {
		p := filepath.Join(dir, fmt.Sprintf("layer%d.tar.gz", li))
		f, err := os.Create(p)
		if err != nil {
			tb.Fatal(err)
		}
		h := sha256.New()
		cw := &countWriter{w: io.MultiWriter(f, h)}
		bw := bufio.NewWriterSize(cw, 1<<20)
		zw, _ := gzip.NewWriterLevel(bw, gzip.BestSpeed)
		tw := tar.NewWriter(zw)
		mtime := time.Unix(1700000000+int64(li), 0)
		write := func(hd *tar.Header, n int64) {
			hd.ModTime, hd.Format = mtime, tar.FormatPAX
			if err := tw.WriteHeader(hd); err != nil {
				tb.Fatal(err)
			}
			for n > 0 {
				m := min(n, int64(len(buf)))
				content.Read(buf[:m/2])
				for i := m / 2; i < m; i++ { // half compressible
					buf[i] = byte('a' + i%23)
				}
				tw.Write(buf[:m])
				n -= m
			}
			total += hd.Size
		}
		dirs := 40 + s.files/200
		for d := range dirs {
			write(&tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("l%d/d%03d/", li, d), Mode: 0o755}, 0)
		}
		var mine []string
		avg := s.bytes / int64(s.files)
		for i := range s.files {
			// Sizes: mostly small, a few large; mean avg.
			var n int64
			if rng.IntN(10) == 0 {
				n = avg*5 + rng.Int64N(avg*3+1)
			} else {
				n = rng.Int64N(avg/2 + 1)
			}
			name := fmt.Sprintf("l%d/d%03d/f%05d", li, rng.IntN(dirs), i)
			write(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: n, Uid: rng.IntN(3) * 1000}, n)
			mine = append(mine, name)
			files++
		}
		for i := 0; i < s.links && i < len(mine); i++ {
			write(&tar.Header{Typeflag: tar.TypeLink, Name: mine[i] + ".lnk", Linkname: mine[i], Mode: 0o644}, 0)
		}
		for i := 0; i < s.overwrite && len(lower) > 0; i++ {
			name := lower[rng.IntN(len(lower))]
			n := rng.Int64N(avg + 1)
			write(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o600, Size: n}, n)
		}
		for i := 0; i < s.whiteouts && len(lower) > 0; i++ {
			name := lower[rng.IntN(len(lower))]
			write(&tar.Header{Typeflag: tar.TypeReg, Name: filepath.Dir(name) + "/.wh." + filepath.Base(name), Mode: 0o644}, 0)
		}
		if err := tw.Close(); err != nil {
			tb.Fatal(err)
		}
		zw.Close()
		bw.Flush()
		if err := f.Close(); err != nil {
			tb.Fatal(err)
		}
		lower = append(lower, mine...)
		img.layers = append(img.layers, &fileLayer{path: p, digest: blob.NewDigestFromHash(h), size: cw.n})
	}
	return img, total, files
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// fileTier is a minimal file-backed blob.Tier for the benchmark: blobs are
// files written through blob.Copy (hashing, temp file, rename), refs a map.
type fileTier struct {
	dir  string
	mu   sync.Mutex
	refs map[blob.RefKey]blob.Ref
}

func newFileTier(dir string) *fileTier {
	return &fileTier{dir: dir, refs: map[blob.RefKey]blob.Ref{}}
}

func (t *fileTier) path(d blob.Digest) string { return filepath.Join(t.dir, d.Encoded()) }
func (t *fileTier) Name() string              { return "bench-file" }
func (t *fileTier) Stat(ctx context.Context, d blob.Digest) (blob.Info, error) {
	fi, err := os.Stat(t.path(d))
	if err != nil {
		return blob.Info{}, fmt.Errorf("%s: %w", d, blob.ErrNotFound)
	}
	return blob.Info{Digest: d, Size: fi.Size(), Tier: t.Name()}, nil
}
func (t *fileTier) Open(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	info, err := t.Stat(ctx, d)
	if err != nil {
		return nil, info, err
	}
	f, err := os.Open(t.path(d))
	if err != nil {
		return nil, info, err
	}
	return blob.NewVerifier(f, d, info.Size, nil), info, nil
}
func (t *fileTier) Put(ctx context.Context, d blob.Digest, size int64, r io.Reader) error {
	tmp, err := os.CreateTemp(t.dir, "put-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriterSize(tmp, 1<<20)
	if _, err := blob.Copy(w, r, d, size); err != nil {
		tmp.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), t.path(d))
}
func (t *fileTier) Delete(ctx context.Context, d blob.Digest) error { return os.Remove(t.path(d)) }
func (t *fileTier) Walk(ctx context.Context, fn func(blob.Info) error) error {
	return blob.ErrUnsupported
}
func (t *fileTier) GetRef(ctx context.Context, k blob.RefKey) (blob.Ref, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.refs[k]
	if !ok {
		return r, fmt.Errorf("%s: %w", k, blob.ErrNotFound)
	}
	return r, nil
}
func (t *fileTier) PutRef(ctx context.Context, k blob.RefKey, r blob.Ref) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.refs[k] = r
	return nil
}
func (t *fileTier) DeleteRef(ctx context.Context, k blob.RefKey) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.refs, k)
	return nil
}
func (t *fileTier) WalkRefs(ctx context.Context, ns string, fn func(blob.RefKey, blob.Ref) error) error {
	return blob.ErrUnsupported
}
func (t *fileTier) Usage(ctx context.Context) (blob.Usage, error) {
	return blob.Usage{}, blob.ErrUnsupported
}
func (t *fileTier) Close() error { return nil }

// extractTo writes the flattened stream r into dir the way tar -x would
// (as root: owners, modes, times, devices, xattrs, hard links).
func extractTo(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	buf := make([]byte, 1<<20)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(dir, h.Name)
		mode := uint32(h.Mode & 0o7777)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			if _, err := io.CopyBuffer(f, tr, buf); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, p); err != nil {
				return err
			}
		case tar.TypeLink:
			if err := os.Link(filepath.Join(dir, h.Linkname), p); err != nil {
				return err
			}
			continue
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			m := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[h.Typeflag]
			if err := unix.Mknod(p, m|mode, int(unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor)))); err != nil {
				return err
			}
		}
		for k, v := range h.PAXRecords {
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				if err := unix.Lsetxattr(p, x, []byte(v), 0); err != nil {
					return err
				}
			}
		}
		if err := os.Lchown(p, h.Uid, h.Gid); err != nil {
			return err
		}
		if h.Typeflag != tar.TypeSymlink {
			if err := os.Chmod(p, os.FileMode(mode)|modeBits(mode)); err != nil {
				return err
			}
		}
		ts := []unix.Timespec{unix.NsecToTimespec(h.ModTime.UnixNano()), unix.NsecToTimespec(h.ModTime.UnixNano())}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
}

func modeBits(m uint32) os.FileMode {
	var b os.FileMode
	if m&0o4000 != 0 {
		b |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		b |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		b |= os.ModeSticky
	}
	return b
}

// cpuTime is the user+system CPU time of this process and its waited-for
// children (mke2fs): a measure that other load on the machine does not
// inflate, unlike wall time.
func cpuTime(tb testing.TB) time.Duration {
	var total time.Duration
	for _, who := range []int{unix.RUSAGE_SELF, unix.RUSAGE_CHILDREN} {
		var ru unix.Rusage
		if err := unix.Getrusage(who, &ru); err != nil {
			tb.Fatal(err)
		}
		total += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return total
}

// peakRSS returns VmHWM in bytes; resetPeakRSS resets it (Linux clear_refs).
func peakRSS(tb testing.TB) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	tb.Fatal("no VmHWM")
	return 0
}

func resetPeakRSS(tb testing.TB) {
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		tb.Logf("cannot reset peak RSS (%v): the figure includes setup", err)
	}
}

// BenchmarkConvert512MiB converts a ~512 MiB, 20k-file, 4-layer gzip image
// from cached blobs (files), and in the same run takes the classic route:
// flatten, extract to a directory, mke2fs -d. It reports the conversion
// alone (flatten + tar2ext4 + finishFS into a file), the whole Materialize
// (plus hashing, storing the blob in a file-backed tier, the ref), the
// classic route, the ratios, the CPU time of each (which other load on a
// shared machine does not inflate), and the ext4 route's peak RSS (VmHWM,
// reset before it).
func BenchmarkConvert512MiB(b *testing.B) {
	mke2fs := requireBinary(b, "mke2fs")
	if os.Geteuid() != 0 {
		b.Skip("the classic route extracts with owners and devices: needs root")
	}
	dir := b.TempDir()
	img, total, files := genImage(b, dir, 1, []genSpec{
		{files: 11000, bytes: 315 << 20},
		{files: 4500, bytes: 135 << 20, overwrite: 600, whiteouts: 300},
		{files: 3000, bytes: 90 << 20, overwrite: 300, whiteouts: 200, links: 200},
		{files: 1500, bytes: 45 << 20, overwrite: 100, links: 100},
	})
	b.Logf("image: %d layers, %d files, %d MiB uncompressed", len(img.layers), files, total>>20)
	b.SetBytes(total)
	b.ReportAllocs()
	ctx := context.Background()
	var convTime, matTime, classicTime time.Duration
	var convCPU, matCPU, classicCPU time.Duration
	var rss int64
	var imgSize int64
	iters := 0
	for b.Loop() {
		iters++
		work := filepath.Join(dir, "work")
		os.RemoveAll(work)
		store := newFileTier(filepath.Join(dir, "store"))
		os.RemoveAll(store.dir)
		os.MkdirAll(store.dir, 0o755)
		conv, err := New(Config{Store: store, WorkDir: work})
		if err != nil {
			b.Fatal(err)
		}
		resetPeakRSS(b)

		// Conversion alone: layers -> finished ext4 file.
		cpu0 := cpuTime(b)
		start := time.Now()
		f, err := os.Create(filepath.Join(dir, "convert.ext4"))
		if err != nil {
			b.Fatal(err)
		}
		if err := conv.build(ctx, img, f, growSpec{GDTBlocks: gdtBlocks(DefaultMaxDiskSize)}); err != nil {
			b.Fatal(err)
		}
		f.Close()
		convTime += time.Since(start)
		convCPU += cpuTime(b) - cpu0
		os.Remove(f.Name())

		// The whole derived-blob path: conversion, hash, Put, ref, publish.
		cpu0 = cpuTime(b)
		start = time.Now()
		res, err := conv.Materialize(ctx, img, nil)
		if err != nil {
			b.Fatal(err)
		}
		matTime += time.Since(start)
		matCPU += cpuTime(b) - cpu0
		rss = max(rss, peakRSS(b))
		imgSize = res.Size

		b.StopTimer()
		os.RemoveAll(work)
		os.RemoveAll(store.dir)
		b.StartTimer()

		cpu0 = cpuTime(b)
		start = time.Now()
		classicRoute(b, img, dir, iters, mke2fs, total, files)
		classicTime += time.Since(start)
		classicCPU += cpuTime(b) - cpu0
	}
	n := float64(iters)
	b.ReportMetric(convTime.Seconds()/n, "ext4-convert-s/op")
	b.ReportMetric(matTime.Seconds()/n, "ext4-materialize-s/op")
	b.ReportMetric(classicTime.Seconds()/n, "classic-s/op")
	b.ReportMetric(classicTime.Seconds()/convTime.Seconds(), "speedup-convert")
	b.ReportMetric(classicTime.Seconds()/matTime.Seconds(), "speedup-materialize")
	b.ReportMetric(convCPU.Seconds()/n, "ext4-convert-cpu-s/op")
	b.ReportMetric(matCPU.Seconds()/n, "ext4-materialize-cpu-s/op")
	b.ReportMetric(classicCPU.Seconds()/n, "classic-cpu-s/op")
	b.ReportMetric(float64(rss)/(1<<20), "ext4-peak-rss-MiB")
	b.ReportMetric(float64(imgSize)/(1<<20), "image-MiB")
}

// classicRoute extracts into a new tree each iteration and leaves the trees
// for the end of the benchmark: on ext4 without a journal, files created
// right after 20k others were deleted cost 20 times more (the inode
// allocator passes over recently deleted inodes; see docs/benchmarks.md),
// which made the classic route look 2-3 times slower than it is.
func classicRoute(b *testing.B, img manifest.Image, dir string, iter int, mke2fs string, total int64, files int) {
	tree := filepath.Join(dir, fmt.Sprintf("tree-%d", iter))
	out := filepath.Join(dir, "classic.ext4")
	os.Remove(out)
	if err := os.Mkdir(tree, 0o755); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var ops []TarOpener
	for _, l := range img.Layers() {
		ops = append(ops, func(ctx context.Context) (io.ReadCloser, error) { return layerioOpen(ctx, l) })
	}
	pr, pw := io.Pipe()
	go func() {
		_, err := Flatten(ctx, ops, pw, dir)
		pw.CloseWithError(err)
	}()
	if err := extractTo(pr, tree); err != nil {
		b.Fatal(err)
	}
	size := (total*13/10 + int64(files)*4096 + 64<<20) >> 10 // KiB
	cmd := exec.Command(mke2fs, "-q", "-F", "-t", "ext4", "-b", "4096", "-N", strconv.Itoa(files*2+1000), "-d", tree, out, strconv.FormatInt(size, 10)+"k")
	if o, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("mke2fs: %v\n%s", err, o)
	}
	b.StopTimer()
	os.Remove(out)
	b.StartTimer()
}

func layerioOpen(ctx context.Context, l manifest.Layer) (io.ReadCloser, error) {
	return layerio.Open(ctx, l, layerio.Limits{})
}
