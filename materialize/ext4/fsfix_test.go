package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/internal/tartest"
	"github.com/strata-oci/strata/tiers/memory"
)

// rawImage writes the tar2ext4 image of layers, before finishFS, to a file.
func rawImage(t *testing.T, maxDisk int64, layers ...[]byte) string {
	t.Helper()
	c := &Converter{cfg: Config{MaxDiskSize: maxDisk}, tmpDir: t.TempDir()}
	p := filepath.Join(t.TempDir(), "raw.ext4")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// build runs finishFS; undo nothing: callers who need the raw writer
	// output use rawWriterImage.
	if err := c.build(context.Background(), imageOf(layers...), f, growSpec{GDTBlocks: gdtBlocks(maxDisk)}); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPaddingIsWhatMakesE2fsckFail(t *testing.T) {
	bin := requireBinary(t, "e2fsck")
	p := rawImage(t, DefaultMaxDiskSize, tartest.New().Dir("d").File("d/f", []byte("f")).Tar())
	// Clear the padding bits again: e2fsck must complain, as it does about
	// tar2ext4's own output.
	b, _ := os.ReadFile(p)
	ipg := binary.LittleEndian.Uint32(b[sbOffset+sbInodesPerGroup:])
	ib := binary.LittleEndian.Uint32(b[fsBlockSize+gdInodeBitmap:])
	bm := b[int(ib)*fsBlockSize : int(ib+1)*fsBlockSize]
	for j := ipg; j < fsBlockSize*8; j++ {
		bm[j/8] &^= 1 << (j % 8)
	}
	broken := p + ".broken"
	if err := os.WriteFile(broken, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-fn", broken).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("Padding at end of inode bitmap is not set")) {
		t.Fatalf("e2fsck on an image without padding: %v\n%s", err, out)
	}
	// finishFS repairs it.
	f, err := os.OpenFile(broken, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := finishFS(f, growSpec{GDTBlocks: gdtBlocks(DefaultMaxDiskSize)}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	e2fsck(t, broken)
	if b2, _ := os.ReadFile(broken); !bytes.Equal(b2, b0(t, p)) {
		t.Error("repairing the padding did not give back the finished image byte for byte")
	}
}

func b0(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// head returns the first 8 MiB of a file (superblock, descriptors, and for
// small images everything), plus its size.
func head(t *testing.T, p string) []byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 8<<20)
	n, _ := io.ReadFull(f, b)
	fi, _ := f.Stat()
	return binary.LittleEndian.AppendUint64(b[:n], uint64(fi.Size()))
}

// groupsOf reads the group count from an image's head (see head).
func groupsOf(h []byte) uint32 {
	blocks := binary.LittleEndian.Uint32(h[sbOffset+sbBlocksCount:])
	return (blocks + fsBlockSize*8 - 1) / (fsBlockSize * 8)
}

func TestFinishFSGrows(t *testing.T) {
	many := tartest.New()
	for i := range 3000 {
		many.File("f/"+itoa(i), []byte("x"))
	}
	tests := []struct {
		desc    string
		layer   []byte
		maxDisk int64
		gdt     uint32 // overrides the descriptor blocks finishFS is told about
		// sameGroups: the group count must not change.
		sameGroups bool
		spec       growSpec
		wantErr    bool
	}{
		{desc: "nothing to add", layer: tartest.New().File("a", []byte("a")).Tar()},
		{desc: "a few blocks fit in the last group's tail", layer: tartest.New().File("a", []byte("a")).Tar(), spec: growSpec{FreeBlocks: 100}},
		{desc: "exactly one full group more", layer: tartest.New().File("a", []byte("a")).Tar(), spec: growSpec{FreeBlocks: 2 * fsBlockSize * 8}},
		{desc: "inodes only: tables widened in place, no new group", layer: many.Tar(), spec: growSpec{FreeInodes: 8000}, sameGroups: true},
		{desc: "inodes beyond 32768 per group: widened, then new groups", layer: many.Tar(), spec: growSpec{FreeInodes: 40000}},
		{desc: "inodes and blocks", layer: many.Tar(), spec: growSpec{FreeInodes: 1000, FreeBlocks: 3 * fsBlockSize * 8}},
		{desc: "more groups than the reserved descriptor blocks hold", layer: tartest.New().File("a", []byte("a")).Tar(), gdt: 1, spec: growSpec{FreeBlocks: 130 * fsBlockSize * 8}, wantErr: true},
		{desc: "big content and 300 MiB", layer: tartest.New().File("big", tartest.Content("big", 40<<20)).Tar(), spec: growSpec{FreeBlocks: 300 << 20 / fsBlockSize, FreeInodes: 50}},
		{desc: "beyond the maximum disk size", layer: tartest.New().File("a", []byte("a")).Tar(), maxDisk: 512 << 20, spec: growSpec{FreeBlocks: 600 << 20 / fsBlockSize}, wantErr: true},
		{desc: "just within the maximum disk size", layer: tartest.New().File("a", []byte("a")).Tar(), maxDisk: 512 << 20, spec: growSpec{FreeBlocks: 480 << 20 / fsBlockSize}},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			maxDisk := tc.maxDisk
			if maxDisk == 0 {
				maxDisk = DefaultMaxDiskSize
			}
			p := rawImage(t, maxDisk, tc.layer)
			before := head(t, p)
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			spec := tc.spec
			spec.GDTBlocks = gdtBlocks(maxDisk)
			if tc.gdt != 0 {
				spec.GDTBlocks = tc.gdt
			} else {
				spec.MaxBytes = maxDisk
			}
			g, err := finishFS(f, spec)
			if tc.wantErr {
				if err == nil {
					t.Fatal("finishFS succeeded")
				}
				if after := head(t, p); !bytes.Equal(after, before) {
					t.Error("a refused grow changed the image")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if uint64(g.FreeBlocks) < tc.spec.FreeBlocks || uint64(g.FreeInodes) < tc.spec.FreeInodes {
				t.Errorf("geometry %+v short of %+v", g, tc.spec)
			}
			if tc.sameGroups && g.Groups != groupsOf(before) {
				t.Errorf("groups %d, was %d", g.Groups, groupsOf(before))
			}
			fi, _ := f.Stat()
			if fi.Size() != int64(g.Blocks)*fsBlockSize {
				t.Errorf("file size %d, %d blocks", fi.Size(), g.Blocks)
			}
			e2fsck(t, p)
			// Idempotent: finishing again with the same spec changes nothing.
			mid := head(t, p)
			if _, err := finishFS(f, spec); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(head(t, p), mid) {
				t.Error("a second finishFS with the same spec changed the image")
			}
		})
	}
}

func TestFinishFSRefusesUnknownLayouts(t *testing.T) {
	p := rawImage(t, DefaultMaxDiskSize, tartest.New().File("a", []byte("a")).Tar())
	good := b0(t, p)
	tests := []struct {
		desc   string
		mutate func(b []byte)
	}{
		{"not ext4", func(b []byte) { b[sbOffset+sbMagic] = 0 }},
		{"1 KiB blocks", func(b []byte) { binary.LittleEndian.PutUint32(b[sbOffset+sbLogBlockSize:], 0) }},
		{"64bit feature", func(b []byte) { b[sbOffset+sbFeatureIncompat] |= incompat64Bit }},
		{"metadata_csum", func(b []byte) {
			binary.LittleEndian.PutUint32(b[sbOffset+sbFeatureRoCompat:], binary.LittleEndian.Uint32(b[sbOffset+sbFeatureRoCompat:])|roCompatMetadataCsum)
		}},
		{"inode count inconsistent", func(b []byte) { binary.LittleEndian.PutUint32(b[sbOffset+sbInodesCount:], 7) }},
		{"zero inodes per group", func(b []byte) { binary.LittleEndian.PutUint32(b[sbOffset+sbInodesPerGroup:], 0) }},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			b := bytes.Clone(good)
			tc.mutate(b)
			q := filepath.Join(t.TempDir(), "x")
			os.WriteFile(q, b, 0o644)
			f, _ := os.OpenFile(q, os.O_RDWR, 0)
			defer f.Close()
			_, err := finishFS(f, growSpec{FreeBlocks: 10, GDTBlocks: 4})
			if !errors.Is(err, errLayout) {
				t.Fatalf("err = %v, want errLayout", err)
			}
		})
	}
	t.Run("truncated file", func(t *testing.T) {
		q := filepath.Join(t.TempDir(), "x")
		os.WriteFile(q, good[:1500], 0o644)
		f, _ := os.OpenFile(q, os.O_RDWR, 0)
		defer f.Close()
		if _, err := finishFS(f, growSpec{}); err == nil {
			t.Fatal("finishFS accepted a truncated image")
		}
	})
}

// genLayer is an uncompressed layer generated on the fly by write, so big
// layers need no memory.
type genLayer struct {
	write  func(w io.Writer) error
	digest blob.Digest
	size   int64
}

func newGenLayer(t *testing.T, write func(w io.Writer) error) *genLayer {
	h := sha256.New()
	cw := &countWriter{w: h}
	if err := write(cw); err != nil {
		t.Fatal(err)
	}
	return &genLayer{write: write, digest: blob.NewDigestFromHash(h), size: cw.n}
}

func (l *genLayer) Digest() blob.Digest             { return l.digest }
func (l *genLayer) Authorize(context.Context) error { return nil }
func (l *genLayer) MediaType() types.MediaType {
	return types.MediaType("application/vnd.oci.image.layer.v1.tar")
}
func (l *genLayer) Size() int64 { return l.size }
func (l *genLayer) Open(ctx context.Context) (io.ReadCloser, error) {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(l.write(pw)) }()
	return blob.NewVerifier(pr, l.digest, l.size, nil), nil
}

// TestMultiGroupImage: content beyond one block group (128 MiB) gives an
// image with several groups, each with inode bitmap padding to set.
func TestMultiGroupImage(t *testing.T) {
	layer := newGenLayer(t, func(w io.Writer) error {
		tw := tar.NewWriter(w)
		zeros := make([]byte, 1<<20)
		for i, n := range []int{150, 3} {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "big" + itoa(i), Mode: 0o644, Size: int64(n) << 20}); err != nil {
				return err
			}
			for range n {
				if _, err := tw.Write(zeros); err != nil {
					return err
				}
			}
		}
		for i := range 100 {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "d" + itoa(i) + "/", Mode: 0o755}); err != nil {
				return err
			}
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "d" + itoa(i) + "/f", Mode: 0o644, Size: 1}); err != nil {
				return err
			}
			tw.Write([]byte{'x'})
		}
		return tw.Close()
	})
	// A store that declines big blobs: the image stays local, not in memory.
	c := newConverter(t, memory.New(memory.Config{MaxBlob: 1 << 20}))
	res, err := c.Materialize(context.Background(), &testImage{layers: []manifest.Layer{layer}}, &Options{FreeBytes: 10 << 20, FreeInodes: 3000})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(res.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sb := make([]byte, 1024)
	f.ReadAt(sb, sbOffset)
	blocks := binary.LittleEndian.Uint32(sb[sbBlocksCount:])
	groups := (blocks + fsBlockSize*8 - 1) / (fsBlockSize * 8)
	if groups < 2 {
		t.Fatalf("image has %d group(s); the test needs several", groups)
	}
	// The free inodes came from wider inode tables, not from new groups.
	if ipg := binary.LittleEndian.Uint32(sb[sbInodesPerGroup:]); ipg*groups < 3000 || groups > 3 {
		t.Errorf("%d groups of %d inodes: inode tables were not widened", groups, ipg)
	}
	e2fsck(t, res.Path)
	if alloc := allocated(t, res.Path); alloc > 16<<20 {
		t.Errorf("153 MiB of zero content allocate %d bytes: zero blocks not holes", alloc)
	}
}
