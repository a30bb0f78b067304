package svg

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"testing"
)

func parse(t *testing.T, d *Doc) (root string, texts []string) {
	t.Helper()
	var b bytes.Buffer
	if _, err := d.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(&b)
	inText := false
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return root, texts
		}
		if err != nil {
			t.Fatalf("not well-formed: %v\n%s", err, b.String())
		}
		switch x := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = x.Name.Local
			}
			inText = x.Name.Local == "text"
		case xml.CharData:
			if inText {
				texts = append(texts, string(x))
			}
		case xml.EndElement:
			inText = false
		}
	}
}

func TestChartsWellFormed(t *testing.T) {
	for _, tc := range []struct {
		desc string
		doc  *Doc
		want string
	}{
		{"latency with markup in labels", Latency(`a <b> & "c"`, []Range{{Label: "x<y&z", P50: 100, P95: 2000, P99: 30000}, {Label: "b", P50: 1e6, P95: 2e6, P99: 5e6}}), "x<y&z"},
		{"latency without rows", Latency("empty", nil), "empty"},
		{"bars", Bars("pipeline", "s", []Bar{{Label: "cold & warm", Value: 1.5, Min: 1, Max: 2}, {Label: "peer", Value: 3, Peer: true}}), "cold & warm"},
		{"bars all zero", Bars("zero", "s", []Bar{{Label: "z"}}), "zero"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			root, texts := parse(t, tc.doc)
			if root != "svg" {
				t.Errorf("root %q", root)
			}
			if !strings.Contains(strings.Join(texts, "\n"), tc.want) {
				t.Errorf("text %q not found in %q", tc.want, texts)
			}
		})
	}
}

func TestFormatNS(t *testing.T) {
	for _, tc := range []struct {
		ns   float64
		want string
	}{
		{250, "250ns"}, {1500, "1.5µs"}, {2.5e6, "2.5ms"}, {3.25e9, "3.25s"},
	} {
		if got := FormatNS(tc.ns); got != tc.want {
			t.Errorf("FormatNS(%v) = %q, want %q", tc.ns, got, tc.want)
		}
	}
}
