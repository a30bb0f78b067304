package layerio_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/strata-oci/strata/blob"
	. "github.com/strata-oci/strata/materialize/internal/layerio"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// entriesOf reads every entry of a tar stream with Entries, one line each:
// "kind name" plus "->link", " implicit" and, for files, "=content".
func entriesOf(t *testing.T, b []byte, lim EntryLimits) ([]string, error) {
	t.Helper()
	es := NewEntries(bytes.NewReader(b), lim)
	var out []string
	for {
		e, err := es.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		s := e.Kind.String() + " " + e.Name
		if e.Link != "" {
			s += "->" + e.Link
		}
		if e.Implicit {
			s += " implicit"
		}
		if e.Kind == KindFile {
			c, err := io.ReadAll(es)
			if err != nil {
				return out, err
			}
			s += "=" + string(c)
		}
		out = append(out, s)
	}
}

func TestEntriesDecisions(t *testing.T) {
	reg := func(name string, data string) tar.Header {
		return tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data))}
	}
	tests := []struct {
		desc    string
		tar     []byte
		want    []string
		wantErr error
	}{
		{
			desc: "names are cleaned; dot-dot is clamped at the root",
			tar: tartest.New().Header(reg("../../etc/passwd", "x"), []byte("x")).Header(reg("/abs//./f", "a"), []byte("a")).
				Header(reg("./dot", ""), nil).Header(tar.Header{Typeflag: tar.TypeDir, Name: "./d//e/../f/"}, nil).Tar(),
			want: []string{"directory etc implicit", "regular file etc/passwd=x", "directory abs implicit", "regular file abs/f=a", "regular file dot=",
				"directory d implicit", "directory d/f"},
		},
		{
			desc: "the first entry of a name wins; a directory's later header still counts",
			tar: tartest.New().File("f", []byte("1")).File("f", []byte("2")).Dir("d").File("d/x", nil).File("d", []byte("no")).
				Dir("d", tartest.Mode(0o700)).Symlink("s", "f").Dir("s").Tar(),
			want: []string{"regular file f=1", "directory d", "regular file d/x=", "directory d", "symlink s->f"},
		},
		{
			desc: "an implicit parent takes a later header but not a later non-directory",
			tar:  tartest.New().File("p/q/f", nil).Dir("p").Symlink("p/q", "/etc").Tar(),
			want: []string{"directory p implicit", "directory p/q implicit", "regular file p/q/f=", "directory p"},
		},
		{
			desc:    "an entry under a symlink of the layer is refused",
			tar:     tartest.New().Symlink("s", "/etc").File("s/passwd", nil).Tar(),
			wantErr: ErrInvalidLayer,
		},
		{
			desc:    "an entry under a file of the layer is refused",
			tar:     tartest.New().File("f", nil).Dir("f/d").Tar(),
			wantErr: ErrInvalidLayer,
		},
		{
			desc:    "a whiteout under a symlink of the layer is refused",
			tar:     tartest.New().Symlink("s", "/etc").Whiteout("s/passwd").Tar(),
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "whiteouts and opaque markers come last, resolved against the layer's entries",
			tar: tartest.New().Whiteout("gone").Whiteout("f").File("f", []byte("up")).Whiteout("d").Dir("d").
				File("e/x", nil).Whiteout("e").Opaque("o").Whiteout("gone").Tar(),
			want: []string{"regular file f=up", "directory d", "directory e implicit", "regular file e/x=", "directory o implicit",
				"whiteout gone", "opaque marker d", "opaque marker e", "opaque marker o"},
		},
		{
			desc: "a whiteout's parents are directories of the layer",
			tar:  tartest.New().Whiteout("a/b/c").Tar(),
			want: []string{"directory a implicit", "directory a/b implicit", "whiteout a/b/c"},
		},
		{
			desc: "an opaque marker at the root, twice",
			tar:  tartest.New().Opaque(".").File("f", nil).Opaque(".").Tar(),
			want: []string{"regular file f=", "opaque marker "},
		},
		{
			desc:    "a whiteout named '.wh.' alone is refused",
			tar:     tartest.New().Header(reg("a/.wh.", ""), nil).Tar(),
			wantErr: ErrInvalidLayer,
		},
		{
			desc:    "a whiteout of dot-dot is refused",
			tar:     tartest.New().Header(reg(".wh...", ""), nil).Tar(),
			wantErr: ErrInvalidLayer,
		},
		{
			desc:    "a reserved .wh..wh. name other than the opaque marker is refused",
			tar:     tartest.New().Header(reg(".wh..wh.plnk", ""), nil).Tar(),
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "hard links name an earlier non-directory of the layer, cleaned",
			tar:  tartest.New().File("t", []byte("t")).Link("l", "./t").Link("m", "../l").Tar(),
			want: []string{"regular file t=t", "hard link l->t", "hard link m->l"},
		},
		{
			desc:    "a hard link to a directory is refused",
			tar:     tartest.New().Dir("d").Link("l", "d").Tar(),
			wantErr: ErrInvalidLayer,
		},
		{
			desc:    "a hard link to a later entry is refused",
			tar:     tartest.New().Link("l", "t").File("t", nil).Tar(),
			wantErr: ErrInvalidLayer,
		},
		{
			desc:    "a hard link to the root is refused",
			tar:     tartest.New().File("f", nil).Link("l", "./").Tar(),
			wantErr: ErrInvalidLayer,
		},
		{
			desc:    "a non-directory root is refused",
			tar:     tartest.New().Header(tar.Header{Typeflag: tar.TypeSymlink, Name: "./", Linkname: "/"}, nil).Tar(),
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "the root directory's header is handed out with an empty name",
			tar:  tartest.New().Dir(".").Tar(),
			want: []string{"directory "},
		},
		{
			desc:    "an empty symlink target is refused",
			tar:     tartest.New().Symlink("s", "").Tar(),
			wantErr: ErrInvalidLayer,
		},
		{
			desc:    "a symlink target over MaxSymlinkTarget bytes is refused",
			tar:     tartest.New().Symlink("s", strings.Repeat("x", MaxSymlinkTarget+1)).Tar(),
			wantErr: ErrInvalidLayer,
		},
		{
			desc:    "an owner out of range is refused",
			tar:     tartest.New().File("f", nil, tartest.Owner(1<<32-1, 0)).Tar(),
			wantErr: ErrInvalidLayer,
		},
		{
			desc:    "an unsupported entry type is refused",
			tar:     tartest.New().Header(tar.Header{Typeflag: tar.TypeCont, Name: "c"}, nil).Tar(),
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "PAX global headers are skipped",
			tar: tartest.New().Header(tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "g", PAXRecords: map[string]string{"comment": "x"}}, nil).
				File("f", nil).Tar(),
			want: []string{"regular file f="},
		},
		{
			desc: "a sparse entry is a file of its logical size",
			tar:  tartest.PAXSparse("s", 10, map[int64][]byte{2: []byte("ab")}),
			want: []string{"regular file s=\x00\x00ab\x00\x00\x00\x00\x00\x00"},
		},
		{
			desc:    "a cut tar stream is refused",
			tar:     tartest.New().File("f", bytes.Repeat([]byte("x"), 5000)).Tar()[:700],
			wantErr: ErrInvalidLayer,
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			got, err := entriesOf(t, tc.tar, EntryLimits{})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v (entries %q)", err, tc.wantErr, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

func TestEntriesLimits(t *testing.T) {
	tests := []struct {
		desc string
		tar  []byte
		lim  EntryLimits
		ok   bool
	}{
		{"entries at the limit", tartest.New().File("a", nil).File("b", nil).Tar(), EntryLimits{MaxEntries: 2}, true},
		{"one entry over the limit", tartest.New().File("a", nil).File("b", nil).File("c", nil).Tar(), EntryLimits{MaxEntries: 2}, false},
		{"bytes at the limit", tartest.New().File("a", []byte("12")).File("b", []byte("34")).Tar(), EntryLimits{MaxBytes: 4}, true},
		{"bytes over the limit", tartest.New().File("a", []byte("12")).File("b", []byte("345")).Tar(), EntryLimits{MaxBytes: 4}, false},
		{"a sparse entry's holes count", tartest.PAXSparse("s", 1<<40, map[int64][]byte{0: []byte("x")}), EntryLimits{MaxBytes: 1 << 30}, false},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := entriesOf(t, tc.tar, tc.lim)
			if tc.ok && err != nil {
				t.Fatal(err)
			}
			if !tc.ok && (!errors.Is(err, ErrLimitExceeded) || !errors.Is(err, blob.ErrTooLarge)) {
				t.Fatalf("err = %v, want ErrLimitExceeded wrapping blob.ErrTooLarge", err)
			}
		})
	}
}

// TestEntriesReadToTheEnd: Next returns io.EOF only after the underlying
// reader's end (a verifying reader there checks the digest), and passes
// its error on.
func TestEntriesReadToTheEnd(t *testing.T) {
	b := append(tartest.New().File("f", []byte("x")).Tar(), make([]byte, 4096)...)
	r := &endReader{r: bytes.NewReader(b), err: errors.New("digest mismatch at the end")}
	es := NewEntries(r, EntryLimits{})
	var err error
	for {
		if _, err = es.Next(); err != nil {
			break
		}
	}
	if err != r.err {
		t.Fatalf("err = %v, want the reader's error at its end", err)
	}
}

type endReader struct {
	r   io.Reader
	err error
}

func (r *endReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err == io.EOF {
		err = r.err
	}
	return n, err
}

// TestCleanNameFastPath: names already clean are returned without
// allocating, every name cleans like path.Clean from "/", and a NUL byte
// (which archive/tar neither writes nor reads back) is refused.
func TestCleanNameFastPath(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"usr/bin/", "usr/bin"}, {"usr/bin/ls", "usr/bin/ls"}, {"./usr", "usr"}, {"/", ""}, {".", ""}, {"./", ""},
		{"a/../b", "b"}, {"..", ""}, {"a//b", "a/b"}, {"a/./b", "a/b"}, {"...", "..."}, {"a/..b", "a/..b"}, {"", ""},
	} {
		got, err := CleanName(c.in)
		if err != nil || got != c.want {
			t.Errorf("CleanName(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	if _, err := CleanName("a\x00b"); !errors.Is(err, ErrInvalidLayer) {
		t.Errorf("CleanName with a NUL byte: %v, want ErrInvalidLayer", err)
	}
	if n := testing.AllocsPerRun(100, func() { CleanName("usr/share/doc/pkg/copyright") }); n != 0 {
		t.Errorf("CleanName of a clean name allocates %v times", n)
	}
}

// FuzzEntries: whatever the stream, Entries does not panic, and what it
// hands out keeps its promises: clean names, every parent a directory
// handed out before, nothing under a non-directory, markers last.
func FuzzEntries(f *testing.F) {
	f.Add(tartest.New().File("t", []byte("T")).Link("a", "t").Whiteout("t").Opaque("d").Tar())
	f.Add(tartest.New().Dir("d").File("d/x", []byte("x")).File("d", []byte("f")).Symlink("s", "d").File("s/y", nil).Tar())
	f.Add(tartest.New().Whiteout("a/b").File("a/b/c", nil).Opaque(".").Header(tar.Header{Typeflag: tar.TypeReg, Name: "../x"}, nil).Tar())
	f.Add(tartest.PAXSparse("s", 1<<20, map[int64][]byte{4096: []byte("x")}))
	for _, fx := range tartest.Fixtures() {
		f.Add(fx.Layers[0])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		es := NewEntries(bytes.NewReader(b), EntryLimits{MaxEntries: 1000, MaxBytes: 1 << 20})
		kinds := map[string]Kind{"": KindDir}
		marks := false
		for {
			e, err := es.Next()
			if err != nil {
				return
			}
			if c, _ := CleanName(e.Name); c != e.Name {
				t.Fatalf("name %q is not clean", e.Name)
			}
			if e.Kind == KindWhiteout || e.Kind == KindOpaque {
				marks = true
			} else if marks {
				t.Fatalf("%v %q after a marker", e.Kind, e.Name)
			}
			if e.Name == "" {
				continue
			}
			dir := e.Name
			if i := strings.LastIndexByte(dir, '/'); i >= 0 {
				dir = dir[:i]
			} else {
				dir = ""
			}
			if kinds[dir] != KindDir {
				t.Fatalf("%v %q: parent is %v", e.Kind, e.Name, kinds[dir])
			}
			switch e.Kind {
			case KindWhiteout:
				if _, ok := kinds[e.Name]; ok {
					t.Fatalf("whiteout of %q, an entry of the layer", e.Name)
				}
			case KindOpaque:
				if kinds[e.Name] != KindDir {
					t.Fatalf("opaque marker of %q, a %v", e.Name, kinds[e.Name])
				}
			case KindLink:
				if k, ok := kinds[e.Link]; !ok || k == KindDir {
					t.Fatalf("hard link %q to %q, a %v", e.Name, e.Link, k)
				}
				kinds[e.Name] = e.Kind
			default:
				if k, ok := kinds[e.Name]; ok && !(k == KindDir && e.Kind == KindDir) {
					t.Fatalf("%v %q again, was %v", e.Kind, e.Name, k)
				}
				kinds[e.Name] = e.Kind
			}
			if e.Kind == KindFile {
				io.Copy(io.Discard, es)
			}
		}
	})
}

// BenchmarkEntries reads a layer of 1000 files in 100 directories; the
// allocations per entry are what Entries adds to archive/tar's.
func BenchmarkEntries(b *testing.B) {
	tb := tartest.New()
	for d := 0; d < 100; d++ {
		dir := "usr/share/pkg" + strconv.Itoa(d)
		tb.Dir(dir)
		for f := 0; f < 10; f++ {
			tb.File(dir+"/file"+strconv.Itoa(f), []byte("x"))
		}
	}
	layer := tb.Tar()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		es := NewEntries(bytes.NewReader(layer), EntryLimits{})
		for {
			if _, err := es.Next(); err != nil {
				break
			}
		}
	}
}

// BenchmarkTarReader is BenchmarkEntries's floor: archive/tar alone.
func BenchmarkTarReader(b *testing.B) {
	tb := tartest.New()
	for d := 0; d < 100; d++ {
		dir := "usr/share/pkg" + strconv.Itoa(d)
		tb.Dir(dir)
		for f := 0; f < 10; f++ {
			tb.File(dir+"/file"+strconv.Itoa(f), []byte("x"))
		}
	}
	layer := tb.Tar()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		tr := tar.NewReader(bytes.NewReader(layer))
		for {
			if _, err := tr.Next(); err != nil {
				break
			}
		}
	}
}
