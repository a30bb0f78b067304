package synth

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
)

func small(seed uint64, comp string) Spec {
	return Spec{Name: "bench/t", Seed: seed, Layers: 2, LayerBytes: 64 << 10, FilesPerLayer: 20, Compressibility: 0.5, Compression: comp, Whiteouts: 3}
}

// TestReproducible: the same Spec gives the same manifest digest, another
// seed another one, for both compressions.
func TestReproducible(t *testing.T) {
	ctx := context.Background()
	for _, comp := range []string{Gzip, Zstd} {
		a, err := Generate(ctx, small(7, comp), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		b, err := Generate(ctx, small(7, comp), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		c, err := Generate(ctx, small(8, comp), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if a.Digest != b.Digest {
			t.Errorf("%s: same spec, digests %s and %s", comp, a.Digest, b.Digest)
		}
		if a.Digest == c.Digest {
			t.Errorf("%s: different seeds, same digest %s", comp, a.Digest)
		}
		if a.CompressedBytes >= a.UncompressedBytes {
			t.Errorf("%s: %d compressed bytes for %d uncompressed at compressibility 0.5", comp, a.CompressedBytes, a.UncompressedBytes)
		}
	}
}

// TestLayerContent reads the layers back through ggcr (digests and diff IDs
// verified by reading) and counts files, whiteouts and links.
func TestLayerContent(t *testing.T) {
	img, err := Generate(context.Background(), small(3, Gzip), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	files, whiteouts, links := 0, 0, 0
	var content int64
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("layer %d: %v", i, err)
			}
			switch {
			case strings.Contains(h.Name, ".wh."):
				whiteouts++
			case h.Typeflag == tar.TypeReg:
				files++
				content += h.Size
			case h.Typeflag == tar.TypeLink || h.Typeflag == tar.TypeSymlink:
				links++
			}
		}
		rc.Close()
	}
	if files != img.Files || files != 2*20 {
		t.Errorf("%d files, Image says %d, want 40", files, img.Files)
	}
	if whiteouts != 3 || links != 4 {
		t.Errorf("%d whiteouts (want 3), %d links (want 4)", whiteouts, links)
	}
	if content != 2*(64<<10) {
		t.Errorf("file content %d bytes, want %d", content, 2*(64<<10))
	}
}

func TestValidate(t *testing.T) {
	ok := small(1, Gzip)
	for _, tc := range []struct {
		desc string
		edit func(*Spec)
	}{
		{"no name", func(s *Spec) { s.Name = "" }},
		{"no layers", func(s *Spec) { s.Layers = 0 }},
		{"no files", func(s *Spec) { s.FilesPerLayer = 0 }},
		{"fewer bytes than files", func(s *Spec) { s.LayerBytes = 5 }},
		{"compressibility above 1", func(s *Spec) { s.Compressibility = 1.5 }},
		{"unknown compression", func(s *Spec) { s.Compression = "lz4" }},
		{"more whiteouts than files", func(s *Spec) { s.Whiteouts = 100 }},
		{"unknown profile", func(s *Spec) { s.Profile = "alpine" }},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			s := ok
			tc.edit(&s)
			if err := s.Validate(); err == nil {
				t.Error("accepted")
			}
		})
	}
	if err := ok.Validate(); err != nil {
		t.Errorf("valid spec refused: %v", err)
	}
}

// TestDebianProfile: a Debian-profile image is reproducible and has the
// shape the profile promises: 60% of the files in the base layer, most of
// them small, some over 128 KiB, about a directory per 8 files nested
// deeper than the top directories, symlinks, hard links, whiteouts of
// files of the layer below, and dpkg's status file in every layer.
func TestDebianProfile(t *testing.T) {
	spec := Spec{Name: "bench/deb", Seed: 5, Layers: 4, FilesPerLayer: 500, Compressibility: 0.6, Compression: Gzip, Whiteouts: 10, Profile: Debian}
	img, err := Generate(context.Background(), spec, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	again, err := Generate(context.Background(), spec, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if img.Digest != again.Digest {
		t.Errorf("same spec, digests %s and %s", img.Digest, again.Digest)
	}
	layers, err := img.Img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var files, small, large, dirs, deep, symlinks, hardlinks, whiteouts, status int
	perLayer := make([]int, len(layers))
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("layer %d: %v", i, err)
			}
			switch {
			case strings.Contains(h.Name, ".wh."):
				whiteouts++
			case h.Typeflag == tar.TypeReg:
				files++
				perLayer[i]++
				if h.Size < 4<<10 {
					small++
				}
				if h.Size >= 128<<10 {
					large++
				}
				if h.Name == "var/lib/dpkg/status" {
					status++
				}
			case h.Typeflag == tar.TypeDir:
				dirs++
				if strings.Count(h.Name, "/") > 5 {
					deep++
				}
			case h.Typeflag == tar.TypeSymlink:
				symlinks++
			case h.Typeflag == tar.TypeLink:
				hardlinks++
			}
		}
		rc.Close()
	}
	if files != img.Files || files < 2000 || files > 2010 {
		t.Errorf("%d files, Image says %d, want about 2000", files, img.Files)
	}
	if perLayer[0] < files/2 {
		t.Errorf("base layer holds %d of %d files, want 60%%", perLayer[0], files)
	}
	if small < files/2 || large == 0 {
		t.Errorf("%d of %d files under 4 KiB (want over half), %d of 128 KiB or more (want some)", small, files, large)
	}
	if dirs < files/10 || deep == 0 {
		t.Errorf("%d directories for %d files (want about 1 per 8), %d nested deep (want some)", dirs, files, deep)
	}
	if symlinks < files/20 || hardlinks != 4*len(layers) {
		t.Errorf("%d symlinks (want about 1 per 10 files), %d hard links (want %d)", symlinks, hardlinks, 4*len(layers))
	}
	if whiteouts != 10*(len(layers)-1) || status != len(layers) {
		t.Errorf("%d whiteouts (want %d), status file in %d layers (want %d)", whiteouts, 10*(len(layers)-1), status, len(layers))
	}
}
