package tartest

import (
	"fmt"
	"sort"
	"strconv"
)

// PAXSparse returns a whole tar stream holding one PAX 1.0 sparse entry (as
// GNU tar --sparse writes it, which archive/tar's writer cannot) of
// logical size realSize, mode 0644, owned by 0:0, with data chunks at the
// given offsets and holes elsewhere.
func PAXSparse(name string, realSize int64, chunks map[int64][]byte) []byte {
	rec := func(k, v string) string {
		r := " " + k + "=" + v + "\n"
		n := len(r) + 1
		for len(strconv.Itoa(n))+len(r) != n {
			n++
		}
		return strconv.Itoa(n) + r
	}
	pax := rec("GNU.sparse.major", "1") + rec("GNU.sparse.minor", "0") + rec("GNU.sparse.name", name) +
		rec("GNU.sparse.realsize", strconv.FormatInt(realSize, 10))
	header := func(name string, typ byte, size int) []byte {
		b := make([]byte, 512)
		copy(b, name)
		copy(b[100:], "0000644\x00")
		copy(b[108:], "0000000\x00")
		copy(b[116:], "0000000\x00")
		copy(b[124:], fmt.Sprintf("%011o\x00", size))
		copy(b[136:], "00000000000\x00")
		b[156] = typ
		copy(b[257:], "ustar\x0000")
		copy(b[148:], "        ")
		sum := 0
		for _, c := range b {
			sum += int(c)
		}
		copy(b[148:], fmt.Sprintf("%06o\x00 ", sum))
		return b
	}
	pad := func(b []byte) []byte { return append(b, make([]byte, (512-len(b)%512)%512)...) }
	offs := make([]int64, 0, len(chunks))
	for off := range chunks {
		offs = append(offs, off)
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	sparseMap := strconv.Itoa(len(offs)) + "\n"
	var data []byte
	for _, off := range offs {
		sparseMap += strconv.FormatInt(off, 10) + "\n" + strconv.Itoa(len(chunks[off])) + "\n"
		data = append(data, chunks[off]...)
	}
	body := append(pad([]byte(sparseMap)), data...)
	var out []byte
	out = append(out, header("PaxHeaders/"+name, 'x', len(pax))...)
	out = append(out, pad([]byte(pax))...)
	out = append(out, header(name, '0', len(body))...)
	out = append(out, pad(body)...)
	return append(out, make([]byte, 1024)...)
}
