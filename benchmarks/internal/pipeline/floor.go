package pipeline

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/registry/credential"
)

// floorEntry is one directory or regular file of a layer.
type floorEntry struct {
	name string
	dir  bool
	size int64
}

// floorLayer is a layer as the floor measurement needs it: the compressed
// blob, and the directories and files its tar stream holds.
type floorLayer struct {
	blob      []byte
	mediaType string
	entries   []floorEntry
}

// overlayFloor measures this machine's floor for overlay-cold on the image:
// the three jobs no cold extractor can skip, downloading every layer blob
// (through the job's proxy, to nowhere), decompressing every layer and
// creating every file, the last two with the blobs and file contents
// already in memory (so no digest, caching, tar parsing, ownership, mode or
// times). It times each alone, decompression and creation at once (the
// floor of a warm extraction, whose blobs are local), and all three at once
// (the floor of a cold one): a perfect pipeline overlaps them on the
// machine's cores.
func (e *env) overlayFloor(ctx context.Context) error {
	x, err := e.warmExecutor(ctx, options{})
	if err != nil {
		return err
	}
	img, err := x.Fetcher().FetchImage(ctx, e.ref, credential.Anonymous)
	if err != nil {
		x.Close()
		return err
	}
	layers, err := readFloorLayers(ctx, img.Layers())
	if cerr := x.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	var urls []string
	var biggest int64
	name, _, _ := strings.Cut(e.job.Repo, ":")
	for i, l := range img.Layers() {
		urls = append(urls, "http://"+e.px.Host+"/v2/"+name+"/blobs/"+string(l.Digest()))
		for _, en := range layers[i].entries {
			biggest = max(biggest, en.size)
		}
	}
	content := make([]byte, biggest)
	for i := range content {
		content[i] = byte(i*7 + i>>9)
	}
	workers := runtime.GOMAXPROCS(0)
	run := 0
	create := func() error {
		run++
		return createAll(ctx, layers, content, filepath.Join(e.job.WorkDir, "floor", fmt.Sprint(run)), workers)
	}
	decompress := func() error { return decompressAll(ctx, layers, workers) }
	client := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: workers}}
	defer client.CloseIdleConnections()
	download := func() error { return downloadAll(ctx, client, urls, workers) }
	atOnce := func(fns ...func() error) func() error {
		return func() error {
			var g errgroup.Group
			for _, fn := range fns {
				g.Go(fn)
			}
			return g.Wait()
		}
	}

	// Interleaved, so a slow moment of the machine touches all of them.
	for i := 0; i < 2; i++ {
		for _, m := range []struct {
			name string
			fn   func() error
		}{
			{OverlayFloorDownload, download},
			{OverlayFloorDecompress, decompress},
			{OverlayFloorCreate, create},
			{OverlayFloorLocal, atOnce(decompress, create)},
			{OverlayFloor, atOnce(download, decompress, create)},
		} {
			t0 := time.Now()
			if err := m.fn(); err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
			e.add(m.name, time.Since(t0))
		}
	}
	e.out.Note = fmt.Sprintf("%d workers per job; download, decompress, create alone, then decompress+create at once (local), then all three (the floor)", workers)
	return nil
}

// readFloorLayers reads every layer blob into memory and lists its entries.
func readFloorLayers(ctx context.Context, ls []manifest.Layer) ([]*floorLayer, error) {
	var layers []*floorLayer
	for _, l := range ls {
		rc, err := l.Open(ctx)
		if err != nil {
			return nil, err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return nil, err
		}
		fl := &floorLayer{blob: b, mediaType: string(l.MediaType())}
		if err := fl.scan(); err != nil {
			return nil, fmt.Errorf("layer %s: %w", l.Digest(), err)
		}
		layers = append(layers, fl)
	}
	return layers, nil
}

// downloadAll GETs every URL to nowhere, workers at a time.
func downloadAll(ctx context.Context, client *http.Client, urls []string, workers int) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for _, u := range urls {
		g.Go(func() error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			if err != nil {
				return err
			}
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("GET %s: %s", u, resp.Status)
			}
			_, err = io.CopyBuffer(io.Discard, resp.Body, make([]byte, 256<<10))
			return err
		})
	}
	return g.Wait()
}

func (fl *floorLayer) open() (io.ReadCloser, error) {
	r := bytes.NewReader(fl.blob)
	switch {
	case strings.HasSuffix(fl.mediaType, "gzip"):
		return gzip.NewReader(r)
	case strings.HasSuffix(fl.mediaType, "zstd"):
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	case strings.HasSuffix(fl.mediaType, ".tar"):
		return io.NopCloser(r), nil
	}
	return nil, fmt.Errorf("media type %q", fl.mediaType)
}

// scan lists the layer's directories and regular files.
func (fl *floorLayer) scan() error {
	rc, err := fl.open()
	if err != nil {
		return err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	seen := map[string]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		if name == "" || seen[name] {
			continue
		}
		switch h.Typeflag {
		case tar.TypeDir:
			seen[name] = true
			fl.entries = append(fl.entries, floorEntry{name: name, dir: true})
		case tar.TypeReg:
			if strings.HasPrefix(path.Base(name), ".wh.") {
				continue
			}
			seen[name] = true
			fl.entries = append(fl.entries, floorEntry{name: name, size: h.Size})
		}
	}
}

// decompressAll decompresses every layer to nowhere, workers at a time.
func decompressAll(ctx context.Context, layers []*floorLayer, workers int) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for _, fl := range layers {
		g.Go(func() error {
			if err := ctx.Err(); err != nil {
				return err
			}
			rc, err := fl.open()
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.Copy(io.Discard, rc)
			return err
		})
	}
	return g.Wait()
}

// createAll creates every layer's directories and files under dir (one
// directory per layer), writing content's first bytes into each file,
// workers layers at a time.
func createAll(ctx context.Context, layers []*floorLayer, content []byte, dir string, workers int) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for i, fl := range layers {
		g.Go(func() error { return createLayer(ctx, fl, content, filepath.Join(dir, fmt.Sprint(i))) })
	}
	return g.Wait()
}

func createLayer(ctx context.Context, fl *floorLayer, content []byte, root string) error {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	for _, en := range fl.entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		p := filepath.Join(root, en.name)
		if en.dir {
			if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				if err := os.MkdirAll(p, 0o755); err != nil {
					return err
				}
			}
			continue
		}
		// Raw system calls: the least any extractor must do per file.
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
		for b := content[:en.size]; len(b) > 0 && err == nil; {
			var n int
			n, err = unix.Write(fd, b)
			b = b[n:]
		}
		if cerr := unix.Close(fd); err == nil {
			err = cerr
		}
		if err != nil {
			return &os.PathError{Op: "write", Path: p, Err: err}
		}
	}
	return nil
}
