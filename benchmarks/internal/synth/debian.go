package synth

import (
	"archive/tar"
	"context"
	"fmt"
	"math/rand/v2"
	"path"
)

// debianEntry is one entry of a Debian-profile layer.
type debianEntry struct {
	typ  byte // tar.TypeDir, tar.TypeReg, tar.TypeSymlink, tar.TypeLink
	name string
	size int64
	mode int64
	link string
}

// debianTops are the directories a Debian root filesystem's files live
// under; each layer re-declares the ones it uses, as real layers do.
var debianTops = []string{
	"usr/share/doc", "usr/lib/x86_64-linux-gnu", "usr/share/locale", "usr/share/man/man1",
	"usr/lib/python3/dist-packages", "usr/bin", "usr/sbin", "etc", "var/lib/dpkg/info", "usr/share/zoneinfo",
}

// debianFiles is how many regular files layer idx of spec holds (60% in the
// base layer, the rest spread evenly).
func debianFiles(spec Spec, idx int) int {
	total := spec.FilesPerLayer * spec.Layers
	base := total * 6 / 10
	if spec.Layers == 1 {
		return total
	}
	if idx == 0 {
		return base
	}
	return max(1, (total-base)/(spec.Layers-1))
}

// debianSize draws a file size like a Debian root filesystem's.
func debianSize(rng *rand.Rand) int64 {
	u := rng.Float64()
	span := func(lo, hi int64) int64 { return lo + rng.Int64N(hi-lo) }
	switch {
	case u < 0.60:
		return span(0, 4<<10)
	case u < 0.88:
		return span(4<<10, 32<<10)
	case u < 0.98:
		return span(32<<10, 128<<10)
	case u < 0.999:
		return span(128<<10, 1<<20)
	default:
		return span(1<<20, 4<<20)
	}
}

// debianTree lists layer idx's entries (without whiteouts), a pure function
// of (spec.Seed, idx): the upper layer lists it again to pick the files it
// deletes.
func debianTree(spec Spec, idx int) []debianEntry {
	rng := rand.New(rand.NewPCG(spec.Seed^0x9e3779b97f4a7c15, uint64(idx)+1))
	var out []debianEntry
	declared := map[string]bool{}
	var mkdir func(d string)
	mkdir = func(d string) {
		if d == "." || d == "" || declared[d] {
			return
		}
		mkdir(path.Dir(d))
		declared[d] = true
		out = append(out, debianEntry{typ: tar.TypeDir, name: d, mode: 0o755})
	}
	n := debianFiles(spec, idx)
	// Directories: about one per 8 files, each under a top directory or
	// under one made before it (so some nest deeper).
	ndirs := max(1, n/8)
	dirs := make([]string, 0, ndirs)
	depth := map[string]int{}
	for k := range ndirs {
		var parent string
		if len(dirs) > 0 && rng.IntN(3) > 0 {
			parent = dirs[rng.IntN(len(dirs))]
			if depth[parent] >= 4 {
				parent = path.Dir(parent)
			}
		} else {
			parent = debianTops[rng.IntN(len(debianTops))]
		}
		d := fmt.Sprintf("%s/l%d-pkg%d", parent, idx, k)
		depth[d] = depth[parent] + 1
		dirs = append(dirs, d)
		mkdir(d)
	}
	var files []string
	for i := range n {
		dir := dirs[rng.IntN(len(dirs))]
		name := fmt.Sprintf("%s/f%d", dir, i)
		mode := int64(0o644)
		if rng.IntN(10) == 0 {
			mode = 0o755
		}
		out = append(out, debianEntry{typ: tar.TypeReg, name: name, size: debianSize(rng), mode: mode})
		files = append(files, name)
		// A symlink per 10 files, to a file of the layer (relative when in
		// the same directory, absolute otherwise).
		if rng.IntN(10) == 0 {
			target := files[rng.IntN(len(files))]
			link := "/" + target
			if path.Dir(target) == dir {
				link = path.Base(target)
			}
			out = append(out, debianEntry{typ: tar.TypeSymlink, name: fmt.Sprintf("%s/s%d", dir, i), link: link, mode: 0o777})
		}
	}
	// A few hard links (as dpkg ships for some binaries).
	for j := range min(4, len(files)) {
		out = append(out, debianEntry{typ: tar.TypeLink, name: fmt.Sprintf("%s.hl%d", files[j], j), link: files[j]})
	}
	// Every layer rewrites dpkg's status file (the upper ones shadow it).
	mkdir("var/lib/dpkg")
	out = append(out, debianEntry{typ: tar.TypeReg, name: "var/lib/dpkg/status", size: 64<<10 + int64(idx)*8<<10, mode: 0o644})
	return out
}

// writeDebianTar writes layer idx of a Debian-profile spec.
func writeDebianTar(ctx context.Context, tw *tar.Writer, spec Spec, idx int) (layerStats, error) {
	var st layerStats
	var key [32]byte
	for i := range 8 {
		key[i] = byte(spec.Seed >> (8 * i))
	}
	key[8], key[9], key[10] = byte(idx), byte(idx>>8), 'd'
	src := rand.NewChaCha8(key)
	buf := make([]byte, 0, 1<<20)
	for i, e := range debianTree(spec, idx) {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return st, err
			}
		}
		st.entries++
		h := &tar.Header{Typeflag: e.typ, Name: e.name, Mode: e.mode, ModTime: epoch, Linkname: e.link}
		switch e.typ {
		case tar.TypeDir:
			h.Name += "/"
		case tar.TypeReg:
			st.files++
			h.Size = e.size
		}
		if err := tw.WriteHeader(h); err != nil {
			return st, err
		}
		for n := e.size; n > 0; {
			c := min(n, int64(cap(buf)))
			buf = buf[:c]
			rnd := int64(float64(c) * (1 - spec.Compressibility))
			src.Read(buf[:rnd])
			for off := rnd; off < c; off += int64(copy(buf[off:], pattern)) {
			}
			if _, err := tw.Write(buf); err != nil {
				return st, err
			}
			n -= c
		}
	}
	if idx == 0 || spec.Whiteouts == 0 {
		return st, nil
	}
	// Whiteouts of regular files of the layer below (dpkg's status file
	// and hard link targets stay).
	var below []string
	for _, e := range debianTree(spec, idx-1) {
		if e.typ == tar.TypeReg && e.name != "var/lib/dpkg/status" {
			below = append(below, e.name)
		}
	}
	step := max(1, len(below)/spec.Whiteouts)
	for j, k := 4, 0; j < len(below) && k < spec.Whiteouts; j, k = j+step, k+1 {
		st.entries++
		name := path.Join(path.Dir(below[j]), ".wh."+path.Base(below[j]))
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: epoch}); err != nil {
			return st, err
		}
	}
	return st, nil
}
