// Package svg is a small SVG writer for the benchmark charts: rectangles,
// lines, circles and text, escaped, with two chart helpers (latency ranges
// on a log scale, and bars on a linear scale). Its output is well-formed XML.
package svg

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strings"
)

// Doc is an SVG document under construction.
type Doc struct {
	W, H int
	buf  bytes.Buffer
}

// New starts a w x h document.
func New(w, h int) *Doc { return &Doc{W: w, H: h} }

func esc(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

// Rect draws a filled rectangle.
func (d *Doc) Rect(x, y, w, h float64, fill string) {
	fmt.Fprintf(&d.buf, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n", x, y, max(w, 0), max(h, 0), esc(fill))
}

// Line draws a line.
func (d *Doc) Line(x1, y1, x2, y2 float64, stroke string, width float64) {
	fmt.Fprintf(&d.buf, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="%.1f"/>`+"\n", x1, y1, x2, y2, esc(stroke), width)
}

// Circle draws a filled circle.
func (d *Doc) Circle(cx, cy, r float64, fill string) {
	fmt.Fprintf(&d.buf, `<circle cx="%.1f" cy="%.1f" r="%.1f" fill="%s"/>`+"\n", cx, cy, r, esc(fill))
}

// Text draws text; anchor is "start", "middle" or "end".
func (d *Doc) Text(x, y float64, size int, anchor, s string) {
	fmt.Fprintf(&d.buf, `<text x="%.1f" y="%.1f" font-size="%d" text-anchor="%s" font-family="sans-serif">%s</text>`+"\n", x, y, size, esc(anchor), esc(s))
}

// WriteTo writes the document.
func (d *Doc) WriteTo(w io.Writer) (int64, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d">`+"\n", d.W, d.H, d.W, d.H)
	b.WriteString(`<rect x="0" y="0" width="100%" height="100%" fill="white"/>` + "\n")
	b.Write(d.buf.Bytes())
	b.WriteString("</svg>\n")
	return b.WriteTo(w)
}

// Range is one row of a latency chart: p50, p95 and p99 in nanoseconds.
type Range struct {
	Label         string
	P50, P95, P99 float64
}

const (
	labelW = 230
	plotW  = 560
	rowH   = 18
	top    = 40
	bottom = 40
)

// Latency draws rows on a log time axis: a bar from p50 to p99, a dot at
// p50 and a tick at p95.
func Latency(title string, rows []Range) *Doc {
	h := top + bottom + rowH*len(rows)
	d := New(labelW+plotW+40, h)
	d.Text(10, 20, 14, "start", title)
	lo, hi := math.Inf(1), 0.0
	for _, r := range rows {
		if r.P50 > 0 {
			lo = math.Min(lo, r.P50)
		}
		hi = math.Max(hi, r.P99)
	}
	if hi <= 0 || math.IsInf(lo, 1) {
		return d
	}
	lo = math.Pow(10, math.Floor(math.Log10(lo)))
	hi = math.Pow(10, math.Ceil(math.Log10(hi)))
	if hi <= lo {
		hi = lo * 10
	}
	x := func(v float64) float64 {
		v = math.Max(v, lo)
		return labelW + plotW*(math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))
	}
	yEnd := float64(top + rowH*len(rows))
	for v := lo; v <= hi*1.0001; v *= 10 {
		d.Line(x(v), top-4, x(v), yEnd, "#ddd", 1)
		d.Text(x(v), yEnd+16, 10, "middle", FormatNS(v))
	}
	for i, r := range rows {
		y := float64(top + rowH*i + rowH/2)
		d.Text(labelW-6, y+4, 11, "end", r.Label)
		d.Rect(x(r.P50), y-4, x(r.P99)-x(r.P50), 8, "#9ecae1")
		d.Line(x(r.P95), y-6, x(r.P95), y+6, "#08519c", 2)
		d.Circle(x(r.P50), y, 4, "#08519c")
	}
	d.Text(labelW, float64(h-6), 10, "start", "dot: p50, tick: p95, bar end: p99 (log scale)")
	return d
}

// Bar is one row of a bar chart: a value with a min-max whisker.
type Bar struct {
	Label           string
	Value, Min, Max float64
	Peer            bool
}

// Bars draws horizontal bars on a linear axis of unit (e.g. "s"); peer bars
// are drawn in another colour.
func Bars(title, unit string, rows []Bar) *Doc {
	h := top + bottom + rowH*len(rows)
	d := New(labelW+plotW+80, h)
	d.Text(10, 20, 14, "start", title)
	hi := 0.0
	for _, r := range rows {
		hi = math.Max(hi, math.Max(r.Value, r.Max))
	}
	if hi <= 0 {
		return d
	}
	x := func(v float64) float64 { return labelW + plotW*v/hi }
	for i, r := range rows {
		y := float64(top + rowH*i + rowH/2)
		fill := "#3182bd"
		if r.Peer {
			fill = "#fd8d3c"
		}
		d.Text(labelW-6, y+4, 11, "end", r.Label)
		d.Rect(labelW, y-6, x(r.Value)-labelW, 12, fill)
		if r.Max > r.Min {
			d.Line(x(r.Min), y, x(r.Max), y, "#333", 1)
		}
		d.Text(x(r.Value)+4, y+4, 10, "start", fmt.Sprintf("%.3g %s", r.Value, unit))
	}
	d.Text(labelW, float64(h-6), 10, "start", "blue: Strata, orange: peer; whisker: min-max over repetitions")
	return d
}

// FormatNS formats nanoseconds for people.
func FormatNS(ns float64) string {
	switch {
	case ns < 1e3:
		return fmt.Sprintf("%.0fns", ns)
	case ns < 1e6:
		return fmt.Sprintf("%.3gµs", ns/1e3)
	case ns < 1e9:
		return fmt.Sprintf("%.3gms", ns/1e6)
	default:
		return fmt.Sprintf("%.3gs", ns/1e9)
	}
}
