package tiers

import (
	"context"
	"errors"
	"hash"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-oci/strata/blob"
)

// op is a measured tier operation; its name is the "op" label value.
type op int

const (
	opStat op = iota
	opOpen
	opPut
	opDelete
	opWalk
	opGetRef
	opPutRef
	opDeleteRef
	opWalkRefs
	opRepair
	numOps
)

var opNames = [numOps]string{"stat", "open", "put", "delete", "walk", "get_ref", "put_ref", "delete_ref", "walk_refs", "repair"}

// result is the outcome of an operation; its name is the "result" label value.
type result int

const (
	resHit result = iota
	resMiss
	resOK
	resDeclined
	resUnavailable
	resUnsupported
	resMismatch
	resInvalid
	resCanceled
	resError
	numResults
)

var resultNames = [numResults]string{"hit", "miss", "ok", "declined", "unavailable", "unsupported", "mismatch", "invalid", "canceled", "error"}

// classify maps an operation's error to its result. Lookups (stat, open,
// get_ref) succeed as "hit"; everything else as "ok".
func classify(err error, lookup bool) result {
	switch {
	case err == nil && lookup:
		return resHit
	case err == nil:
		return resOK
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return resCanceled
	case errors.Is(err, blob.ErrMismatch):
		return resMismatch
	case errors.Is(err, blob.ErrNotFound):
		return resMiss
	case errors.Is(err, blob.ErrTooLarge):
		return resDeclined
	case errors.Is(err, blob.ErrUnavailable):
		return resUnavailable
	case errors.Is(err, blob.ErrUnsupported):
		return resUnsupported
	case errors.Is(err, blob.ErrInvalidDigest), errors.Is(err, blob.ErrInvalidRef):
		return resInvalid
	default:
		return resError
	}
}

// Instrument returns t wrapped so that every operation is counted and timed
// in m, labelled with t.Name(): requests by op and result, latency, bytes
// read (counted as the caller reads the returned reader, not at Open), bytes
// written by Put, and errors met while reading. The wrapper changes no
// behaviour: results, errors and readers are t's own. Name, Usage and Close
// pass straight through. If t is a Repairer, so is the wrapper (its Repair
// is measured like Put, as op "repair"). If m is nil, Instrument returns t
// unchanged.
//
// The wrapper is as safe for concurrent use as t.
func Instrument(t blob.Tier, m *Metrics) blob.Tier {
	if m == nil {
		return t
	}
	it := newInstrumented(t, t.Name(), m)
	if rp, ok := t.(Repairer); ok {
		it.duration[opRepair] = m.duration.WithLabelValues(it.name, opNames[opRepair])
		return &instrumentedRepairer{instrumented: it, rp: rp}
	}
	return it
}

// newInstrumented returns the measuring wrapper of t (nil for a stack's
// source, which is measured through its Opens only), labelled name.
func newInstrumented(t blob.Tier, name string, m *Metrics) *instrumented {
	it := &instrumented{
		Tier:      t,
		m:         m,
		name:      name,
		readBytes: m.readBytes.WithLabelValues(name),
		written:   m.writeBytes.WithLabelValues(name),
	}
	for o := range opRepair {
		it.duration[o] = m.duration.WithLabelValues(name, opNames[o])
	}
	return it
}

// instrumentedRepairer is the wrapper of a tier that is a Repairer.
type instrumentedRepairer struct {
	*instrumented
	rp Repairer
}

// Repair implements Repairer.
func (it *instrumentedRepairer) Repair(ctx context.Context, d blob.Digest, size int64, r io.Reader) error {
	start := time.Now()
	cr := &countingSource{r: r}
	err := it.rp.Repair(ctx, d, size, cr)
	if n := cr.n.Load(); n > 0 {
		it.written.Add(float64(n))
	}
	it.done(opRepair, start, err, false)
	return err
}

// instrumented embeds the tier it measures and overrides the operations.
type instrumented struct {
	blob.Tier
	m         *Metrics
	name      string
	duration  [numOps]prometheus.Observer
	readBytes prometheus.Counter
	written   prometheus.Counter
	// counters caches the request counters by (op, result), resolved on first use.
	counters [numOps][numResults]atomic.Pointer[prometheus.Counter]
	readErrs [numResults]atomic.Pointer[prometheus.Counter]
}

func (it *instrumented) done(o op, start time.Time, err error, lookup bool) {
	it.duration[o].Observe(time.Since(start).Seconds())
	it.count(o, classify(err, lookup))
}

func (it *instrumented) count(o op, r result) {
	p := &it.counters[o][r]
	c := p.Load()
	if c == nil {
		cc := it.m.requests.WithLabelValues(it.name, opNames[o], resultNames[r])
		c = &cc
		p.Store(c)
	}
	(*c).Inc()
}

func (it *instrumented) readError(err error) {
	r := classify(err, false)
	p := &it.readErrs[r]
	c := p.Load()
	if c == nil {
		cc := it.m.readErrors.WithLabelValues(it.name, resultNames[r])
		c = &cc
		p.Store(c)
	}
	(*c).Inc()
}

func (it *instrumented) Stat(ctx context.Context, d blob.Digest) (blob.Info, error) {
	start := time.Now()
	info, err := it.Tier.Stat(ctx, d)
	it.done(opStat, start, err, true)
	return info, err
}

// Open counts the open itself; the returned reader counts the bytes the
// caller reads and the error (other than io.EOF) that ends reading, once.
func (it *instrumented) Open(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	start := time.Now()
	rc, info, err := it.Tier.Open(ctx, d)
	it.done(opOpen, start, err, true)
	if err != nil {
		return rc, info, err
	}
	return &countingReader{rc: rc, it: it}, info, nil
}

func (it *instrumented) Put(ctx context.Context, d blob.Digest, size int64, r io.Reader) error {
	start := time.Now()
	cr := &countingSource{r: r}
	err := it.Tier.Put(ctx, d, size, cr)
	if n := cr.n.Load(); n > 0 {
		it.written.Add(float64(n))
	}
	it.done(opPut, start, err, false)
	return err
}

func (it *instrumented) Delete(ctx context.Context, d blob.Digest) error {
	start := time.Now()
	err := it.Tier.Delete(ctx, d)
	it.done(opDelete, start, err, false)
	return err
}

func (it *instrumented) Walk(ctx context.Context, fn func(blob.Info) error) error {
	start := time.Now()
	err := it.Tier.Walk(ctx, fn)
	it.done(opWalk, start, err, false)
	return err
}

func (it *instrumented) GetRef(ctx context.Context, k blob.RefKey) (blob.Ref, error) {
	start := time.Now()
	r, err := it.Tier.GetRef(ctx, k)
	it.done(opGetRef, start, err, true)
	return r, err
}

func (it *instrumented) PutRef(ctx context.Context, k blob.RefKey, r blob.Ref) error {
	start := time.Now()
	err := it.Tier.PutRef(ctx, k, r)
	it.done(opPutRef, start, err, false)
	return err
}

func (it *instrumented) DeleteRef(ctx context.Context, k blob.RefKey) error {
	start := time.Now()
	err := it.Tier.DeleteRef(ctx, k)
	it.done(opDeleteRef, start, err, false)
	return err
}

func (it *instrumented) WalkRefs(ctx context.Context, namespace string, fn func(blob.RefKey, blob.Ref) error) error {
	start := time.Now()
	err := it.Tier.WalkRefs(ctx, namespace, fn)
	it.done(opWalkRefs, start, err, false)
	return err
}

// countingReader counts what the caller reads from an instrumented Open.
type countingReader struct {
	rc      io.ReadCloser
	it      *instrumented
	errOnce sync.Once
}

// VerifiedBlob implements blob.VerifiedReader when the tier's reader does.
func (c *countingReader) VerifiedBlob() (blob.Digest, int64) { return blob.VerifiedBlobOf(c.rc) }

// PrefixState implements blob.PrefixHasher when the tier's reader does
// (Read and WriteTo pass its bytes through unchanged).
func (c *countingReader) PrefixState() (hash.Hash, int64) { return blob.PrefixStateOf(c.rc) }

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.rc.Read(p)
	if n > 0 {
		c.it.readBytes.Add(float64(n))
	}
	if err != nil && err != io.EOF {
		c.errOnce.Do(func() { c.it.readError(err) })
	}
	return n, err
}

// WriteTo keeps the inner reader's fast path (the memory tier writes its
// slice in one go) while counting every write as it happens.
func (c *countingReader) WriteTo(w io.Writer) (int64, error) {
	wt, ok := c.rc.(io.WriterTo)
	if !ok {
		return io.Copy(w, struct{ io.Reader }{c})
	}
	n, err := wt.WriteTo(&countingWriter{w: w, c: c})
	if err != nil && err != io.EOF {
		c.errOnce.Do(func() { c.it.readError(err) })
	}
	return n, err
}

func (c *countingReader) Close() error { return c.rc.Close() }

// countingWriter counts bytes handed to w through countingReader.WriteTo.
type countingWriter struct {
	w io.Writer
	c *countingReader
}

func (cw *countingWriter) Write(p []byte) (int, error) {
	n, err := cw.w.Write(p)
	if n > 0 {
		cw.c.it.readBytes.Add(float64(n))
	}
	return n, err
}

// countingSource counts what a Put consumed from its source. The count is
// atomic because a tier may read its source from another goroutine.
type countingSource struct {
	r io.Reader
	n atomic.Int64
}

// VerifiedBlob implements blob.VerifiedReader when the Put's source does.
func (c *countingSource) VerifiedBlob() (blob.Digest, int64) { return blob.VerifiedBlobOf(c.r) }

func (c *countingSource) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}
