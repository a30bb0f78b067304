package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"sort"
	"strings"
	"testing"

	"github.com/strata-oci/strata/materialize/internal/layerio"
	"github.com/strata-oci/strata/materialize/internal/tartest"
)

func TestFlattenFixturesMatchExpected(t *testing.T) {
	for _, fx := range tartest.Fixtures() {
		t.Run(fx.Name, func(t *testing.T) {
			img := fx.Image(t)
			want, err := tartest.Expected(img)
			if err != nil {
				t.Fatal(err)
			}
			mimg := tartest.FromV1(t, img)
			var ops []TarOpener
			for _, l := range mimg.Layers() {
				ops = append(ops, func(ctx context.Context) (io.ReadCloser, error) {
					return layerio.Open(ctx, l, layerio.Limits{})
				})
			}
			var out bytes.Buffer
			if _, err := Flatten(context.Background(), ops, &out, t.TempDir()); err != nil {
				t.Fatal(err)
			}
			if err := diffTrees(want, treeOfTar(t, out.Bytes())); err != nil {
				t.Errorf("%s (%s): flattened tree differs from mutate.Extract's:\n%v", fx.Name, fx.Description, err)
			}
		})
	}
}

// flat is a compact description of one flattened entry: "name type extra".
func flatEntries(t *testing.T, stream []byte) []string {
	t.Helper()
	var out []string
	tr := tar.NewReader(bytes.NewReader(stream))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		s := strings.TrimSuffix(h.Name, "/") + " "
		switch h.Typeflag {
		case tar.TypeReg:
			b, _ := io.ReadAll(tr)
			s += "file=" + string(b)
		case tar.TypeDir:
			s += "dir"
			if h.Mode != 0o755 || h.Uid != 0 {
				s += "(custom)"
			}
		case tar.TypeLink:
			s += "hardlink->" + h.Linkname
		case tar.TypeSymlink:
			s += "symlink->" + h.Linkname
		default:
			s += "type=" + string(h.Typeflag)
		}
		out = append(out, s)
	}
	return out
}

func TestFlattenCases(t *testing.T) {
	custom := tartest.Mode(0o700)
	tests := []struct {
		desc    string
		layers  [][]byte // bottom first
		want    []string // entries in stream order
		wantErr error
		stats   func(FlattenStats) bool
		lim     FlattenLimits
	}{
		{
			desc: "several links to a deleted target: the first becomes the file, the rest link to it",
			layers: [][]byte{
				tartest.New().File("t", []byte("T")).Link("a", "t").Link("b", "t").Link("c", "b").Tar(),
				tartest.New().Whiteout("t").Tar(),
			},
			want:  []string{"a file=T", "b hardlink->a", "c hardlink->a"},
			stats: func(s FlattenStats) bool { return s.LinksToFiles == 1 && s.SpooledBytes == 1 },
		},
		{
			desc: "a link whose own name is shadowed is dropped, its target stays",
			layers: [][]byte{
				tartest.New().File("t", []byte("T")).Link("a", "t").Tar(),
				tartest.New().File("a", []byte("A")).Tar(),
			},
			want: []string{"a file=A", "t file=T"},
		},
		{
			desc: "a link to a replaced target keeps the old content",
			layers: [][]byte{
				tartest.New().File("t", []byte("old")).Link("a", "t").Tar(),
				tartest.New().File("t", []byte("new")).Tar(),
			},
			want: []string{"t file=new", "a file=old"},
		},
		{
			desc: "missing parents are synthesized once; the upper layer's implicit parent wins over a lower header (as in an overlay mount)",
			layers: [][]byte{
				tartest.New().Dir("p", custom).Tar(),
				tartest.New().File("p/q/f", []byte("f")).File("p/q/g", []byte("g")).Tar(),
			},
			want:  []string{"p dir", "p/q dir", "p/q/f file=f", "p/q/g file=g"},
			stats: func(s FlattenStats) bool { return s.Synthesized == 2 },
		},
		{
			desc: "a later header of a layer's implicit parent gives it its metadata",
			layers: [][]byte{
				tartest.New().File("p/f", []byte("f")).Dir("p", custom).Tar(),
			},
			want: []string{"p dir", "p/f file=f", "p dir(custom)"},
		},
		{
			desc: "opaque marker without the directory's own entry: an implicit directory, lower children hidden",
			layers: [][]byte{
				tartest.New().Dir("o", custom).File("o/old", []byte("o")).Tar(),
				tartest.New().Opaque("o").File("o/new", []byte("n")).Tar(),
			},
			want: []string{"o dir", "o/new file=n"},
		},
		{
			desc: "an opaque marker at the root hides every layer below",
			layers: [][]byte{
				tartest.New().Dir("a").File("a/x", []byte("x")).File("top", []byte("t")).Tar(),
				tartest.New().File("b", []byte("b")).Opaque(".").Tar(),
				tartest.New().File("c", []byte("c")).Tar(),
			},
			want: []string{"c file=c", "b file=b"},
		},
		{
			desc: "whiteouts apply to lower layers only: the layer's own entry of the name stays",
			layers: [][]byte{
				tartest.New().File("f", []byte("low")).Dir("d").File("d/low", []byte("l")).Tar(),
				tartest.New().Whiteout("f").File("f", []byte("up")).Whiteout("d").Dir("d").File("d/up", []byte("u")).Tar(),
			},
			want: []string{"f file=up", "d dir", "d/up file=u"},
		},
		{
			desc: "duplicates: the first non-directory wins",
			layers: [][]byte{
				tartest.New().File("f", []byte("first")).File("f", []byte("second")).Symlink("s", "a").File("s", []byte("x")).Tar(),
			},
			want: []string{"f file=first", "s symlink->a"},
		},
		{
			desc:    "an entry under a symlink of the same layer is refused",
			layers:  [][]byte{tartest.New().Symlink("s", "/etc").File("s/passwd", []byte("x")).Tar()},
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "a directory over a lower file hides what lay under the file's name further down",
			layers: [][]byte{
				tartest.New().Dir("x").File("x/deep", []byte("d")).Tar(),
				tartest.New().Whiteout("x").File("x", []byte("file")).Tar(),
				tartest.New().Dir("x").File("x/top", []byte("t")).Tar(),
			},
			want: []string{"x dir", "x/top file=t"},
		},
		{
			desc: "a file over a directory hides its whole subtree",
			layers: [][]byte{
				tartest.New().Dir("d").Dir("d/e").File("d/e/f", []byte("f")).Tar(),
				tartest.New().File("d", []byte("now a file")).Tar(),
			},
			want: []string{"d file=now a file"},
		},
		{
			desc: "whiteouts never appear",
			layers: [][]byte{
				tartest.New().Dir("a").File("a/x", []byte("x")).Tar(),
				tartest.New().Whiteout("a/x").Tar(),
			},
			want: []string{"a dir"},
		},
		{
			desc: "a whiteout named '.wh.' alone is refused",
			layers: [][]byte{
				tartest.New().Header(tar.Header{Typeflag: tar.TypeReg, Name: "a/.wh."}, nil).Tar(),
			},
			wantErr: ErrInvalidLayer,
		},
		{
			desc: "PAX global headers are dropped, ./ and / prefixes cleaned",
			layers: [][]byte{
				tartest.New().Header(tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: map[string]string{"comment": "x"}}, nil).
					Header(tar.Header{Typeflag: tar.TypeReg, Name: "/abs", Mode: 0o644}, []byte("a")).
					Header(tar.Header{Typeflag: tar.TypeReg, Name: "./dot", Mode: 0o644}, []byte("d")).Tar(),
			},
			want: []string{"abs file=a", "dot file=d"},
		},
		{
			desc:   "a path climbing out of the root is clamped at the root",
			layers: [][]byte{tartest.New().Header(tar.Header{Typeflag: tar.TypeReg, Name: "../etc/evil", Mode: 0o644}, []byte("e")).Tar()},
			want:   []string{"etc dir", "etc/evil file=e"},
		},
		{
			desc:    "a hard link climbing out of the root names nothing of the layer",
			layers:  [][]byte{tartest.New().Header(tar.Header{Typeflag: tar.TypeLink, Name: "l", Linkname: "../../etc/passwd"}, nil).Tar()},
			wantErr: ErrInvalidLayer,
		},
		{
			desc:    "a hard link to a name not earlier in the layer is refused",
			layers:  [][]byte{tartest.New().File("t", []byte("t")).Tar(), tartest.New().Link("l", "t").Tar()},
			wantErr: ErrInvalidLayer,
		},
		{
			desc:    "a PAX sparse entry counts with its holes against the image's byte limit",
			layers:  [][]byte{paxSparseBomb()},
			lim:     FlattenLimits{MaxBytes: 1 << 30},
			wantErr: layerio.ErrBudgetExceeded,
		},
		{
			desc:    "a truncated tar is refused",
			layers:  [][]byte{tartest.New().File("f", bytes.Repeat([]byte("x"), 5000)).Tar()[:2000]},
			wantErr: ErrInvalidLayer,
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			var out bytes.Buffer
			st, err := FlattenLimited(context.Background(), openers(tc.layers...), &out, t.TempDir(), tc.lim)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := flatEntries(t, out.Bytes())
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
			if tc.stats != nil && !tc.stats(st) {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestFlattenStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Flatten(ctx, openers(tartest.New().File("f", []byte("f")).Tar()), io.Discard, t.TempDir())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestFlattenLeavesNoSpoolFile(t *testing.T) {
	dir := t.TempDir()
	layers := [][]byte{
		tartest.New().File("t", []byte("T")).Link("a", "t").Tar(),
		tartest.New().Whiteout("t").Tar(),
	}
	if _, err := Flatten(context.Background(), openers(layers...), io.Discard, dir); err != nil {
		t.Fatal(err)
	}
	ents, _ := osReadDir(dir)
	sort.Strings(ents)
	if len(ents) != 0 {
		t.Fatalf("spool dir not empty: %v", ents)
	}
}

func FuzzFlatten(f *testing.F) {
	f.Add(tartest.New().File("t", []byte("T")).Link("a", "t").Tar(), tartest.New().Whiteout("t").Opaque("d").Tar())
	f.Add(tartest.New().Dir("d").File("d/x", []byte("x")).Tar(), tartest.New().File("d", []byte("f")).Tar())
	f.Add(paxSparseBomb(), []byte(nil))
	spool := f.TempDir()
	f.Fuzz(func(t *testing.T, lower, upper []byte) {
		var out bytes.Buffer
		// A sparse entry expands: bound the image's content.
		if _, err := FlattenLimited(context.Background(), openers(lower, upper), &out, spool, FlattenLimits{MaxBytes: 64 << 20}); err != nil {
			return
		}
		// Whatever was accepted must be a well-formed stream for the writer.
		treeOfTar(t, out.Bytes())
	})
}

// paxSparseBomb is a tar with one PAX 1.0 sparse entry: 512 bytes of
// sparse map and 1 byte of data that archive/tar would expand to 9 GB.
func paxSparseBomb() []byte {
	return tartest.PAXSparse("s", 9000000000, map[int64][]byte{0: []byte("x")})
}
