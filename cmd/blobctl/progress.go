package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/sys/unix"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
)

// Progress modes after --progress auto is resolved.
const (
	progressBars  = "bars"  // mpb bars on a terminal
	progressPlain = "plain" // one line when a step starts and one when it ends
	progressNone  = "none"
)

// progress reports the long steps of one command on stderr, never on
// stdout (which carries results). It is safe for concurrent use.
type progress struct {
	mode   string
	w      io.Writer
	bars   *mpb.Progress
	mu     sync.Mutex
	step   *mpb.Bar // the current step's spinner (bars mode)
	closed bool
}

// newProgress resolves --progress and --quiet: auto means bars when stderr
// is a terminal and nothing otherwise; --quiet means none.
func (a *app) newProgress(ctx context.Context) *progress {
	mode := a.progress
	switch {
	case a.quiet:
		mode = progressNone
	case mode == "auto" && isTerminal(a.stderr) && termWidth(a.stderr) > 0:
		mode = progressBars
	case mode == "auto" && isTerminal(a.stderr):
		mode = progressPlain // a terminal without a size: bars would not draw
	case mode == "auto":
		mode = progressNone
	}
	p := &progress{mode: mode, w: a.stderr}
	if mode == progressBars {
		p.bars = mpb.NewWithContext(ctx, mpb.WithOutput(a.stderr), mpb.WithWidth(40))
	}
	return p
}

// termWidth is the width of the terminal w, 0 if unknown.
func termWidth(w io.Writer) int {
	if o, ok := w.(*outWriter); ok {
		w = o.w
	}
	f, ok := w.(*os.File)
	if !ok {
		return 0
	}
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return 0
	}
	return int(ws.Col)
}

// on reports whether anything is shown.
func (p *progress) on() bool { return p.mode != progressNone }

// stepf announces a step whose size is unknown (resolving, storing): a
// line in plain mode, a spinner in bars mode that the next step or close
// ends.
func (p *progress) stepf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.mode {
	case progressPlain:
		fmt.Fprintln(p.w, msg)
	case progressBars:
		if p.closed {
			return
		}
		p.endStep()
		// Add fails (and nothing shows) once the command's context ended.
		p.step, _ = p.bars.Add(0, mpb.SpinnerStyle().Build(), mpb.PrependDecorators(decor.Name(msg)), mpb.BarRemoveOnComplete())
	}
}

// endStep completes the current spinner; p.mu is held.
func (p *progress) endStep() {
	if p.step != nil {
		p.step.SetTotal(-1, true)
		p.step = nil
	}
}

// reader wraps r, the size bytes of blob d being read for verb
// ("download", "extract", "convert"), to show how far it got.
func (p *progress) reader(verb string, d blob.Digest, size int64, r io.Reader) io.Reader {
	name := verb + " " + d.Encoded()[:12] + " "
	switch p.mode {
	case progressBars:
		p.mu.Lock()
		closed := p.closed
		p.mu.Unlock()
		if closed {
			return r
		}
		bar, err := p.bars.Add(size, mpb.BarStyle().Build(),
			mpb.PrependDecorators(decor.Name(name, decor.WCSyncSpaceR)),
			mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f"), decor.Name(" "), decor.AverageSpeed(decor.SizeB1024(0), "% .1f")),
			mpb.BarRemoveOnComplete())
		if err != nil {
			return r // the command's context ended
		}
		pr, err := bar.ProxyReader(r)
		if err != nil {
			return r
		}
		return pr
	case progressPlain:
		return &plainReader{p: p, r: r, name: name, size: size}
	}
	return r
}

// close ends the bars, so that lines printed afterwards do not mix with
// them. Later calls, and steps and readers after it, do nothing.
func (p *progress) close() {
	p.mu.Lock()
	if p.mode != progressBars || p.closed {
		p.closed = true
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.endStep()
	p.mu.Unlock()
	p.bars.Shutdown()
}

// plainReader prints a line when its blob starts and when it is done.
type plainReader struct {
	p       *progress
	r       io.Reader
	name    string
	size    int64
	n       int64
	start   time.Time
	started bool
	done    bool
}

func (r *plainReader) Read(b []byte) (int, error) {
	if !r.started {
		r.started, r.start = true, time.Now()
		r.p.mu.Lock()
		fmt.Fprintf(r.p.w, "%s%s\n", r.name, humanBytes(r.size))
		r.p.mu.Unlock()
	}
	n, err := r.r.Read(b)
	r.n += int64(n)
	if err == io.EOF && !r.done {
		r.done = true
		r.p.mu.Lock()
		fmt.Fprintf(r.p.w, "%sdone: %s in %.1fs\n", r.name, humanBytes(r.n), time.Since(r.start).Seconds())
		r.p.mu.Unlock()
	}
	return n, err
}

// progressImage is a manifest.Image whose layers report on p as the
// materializer reads them.
type progressImage struct {
	manifest.Image
	p    *progress
	verb string
}

func (i progressImage) Layers() []manifest.Layer {
	ls := i.Image.Layers()
	out := make([]manifest.Layer, len(ls))
	for n, l := range ls {
		out[n] = progressLayer{Layer: l, p: i.p, verb: i.verb}
	}
	return out
}

// progressLayer overrides Open only.
type progressLayer struct {
	manifest.Layer
	p    *progress
	verb string
}

func (l progressLayer) Open(ctx context.Context) (io.ReadCloser, error) {
	rc, err := l.Layer.Open(ctx)
	if err != nil {
		return nil, err
	}
	return readCloser{Reader: l.p.reader(l.verb, l.Digest(), l.Size(), rc), Closer: rc}, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}
