package tiers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-oci/strata/blob"
)

// Entry is one tier of a stack.
type Entry struct {
	Tier blob.Tier
	// Shared marks a tier that other machines or tenants share (the REAPI
	// tier). Local() views leave it out, so an anonymous caller never reads
	// or writes it.
	Shared bool
}

// StackConfig configures a Stack.
type StackConfig struct {
	// Name identifies the stack in errors and metrics (default "stack").
	Name string
	// Tiers are ordered top (fastest) to bottom. Tier names should be
	// unique: Without selects by name.
	Tiers []Entry
	// Metrics, if set, wraps every tier with Instrument and counts the
	// stack's collapsed reads and write-backs.
	Metrics *Metrics
}

// Stack is an ordered list of tiers that is itself a blob.Tier.
//
// Reads (Stat, Open, GetRef) go top-down and return the first hit. A tier
// that is unavailable or fails is skipped, not fatal; a miss everywhere wraps
// blob.ErrNotFound and names the tiers that were skipped. A tier's Open that
// fails with a mismatch counts as that tier's miss (the tier drops the
// entry). A mismatch met while reading a stream reaches the caller as a
// *blob.MismatchError, since bytes already delivered cannot be taken back;
// the tier that served them drops its entry, so opening again falls through.
//
// Open of a blob that the top tier lacks is a fill: concurrent fills of one
// digest in one view collapse into one flight, which re-checks the tiers
// top-down, opens the highest tier that holds the blob once, and streams it
// to the caller that started the flight (the leader) while tee-ing it into
// the Put of every upper tier that missed it. Each upper Put verifies and
// commits on its own; none of them is fed a byte beyond what the source
// verified, and a source that fails, or a leader that stops reading with
// nobody else waiting, ends the fill with nothing committed above. The
// leader's reader reports io.EOF only after the upper tiers have committed
// (or failed), so once it has read a blob to the end, the blob is in the
// tiers above. Callers that joined the flight wait for it and then read
// top-down themselves: from the upper tier the flight filled, or, when no
// upper tier took the blob (too large for all of them), from the lower tier
// directly. A waiter whose context ends leaves alone; the flight runs on its
// own context and is cancelled only when nobody is left. If the flight fails
// for any reason other than a miss, its waiters retry instead of sharing the
// failure. An upper tier that declines a size (blob.ErrTooLarge) is not
// offered that size or larger again. Blobs of at most 64 KiB are not
// streamed through a tee: the flight reads them whole (verified), puts them
// into the upper tiers and hands the leader the bytes.
//
// Reads see completed writes: once a write of a blob through the stack has
// completed (a Put through it or any of its views has returned, or a fill
// has committed its write-back, which its leader sees as io.EOF), an Open
// of that blob that starts afterwards never answers with a miss that a
// flight found before that write; a caller that joined such a flight looks
// again. Writes that bypass the stack (into a tier directly, or by another
// machine into a shared tier) are seen once the tier shows them. Delete
// makes no such promise against a fill under way: a fill that found the
// blob in a lower tier before a Delete may still write it into the tiers
// above after the Delete has returned (verified bytes, like any fill), so
// a blob that was being read can reappear.
//
// Put writes to every tier at once from one pass over the source (each tier
// verifies and commits on its own); Delete, PutRef and DeleteRef go to every
// tier; GetRef writes a ref found below back into the tiers above that
// missed it. Walk and WalkRefs list the union of the tiers without
// duplicates.
//
// Local and Without return views of the same stack that leave tiers out, for
// one request. Views share the parent's tiers and flights (keyed by view),
// and only the root stack's Close closes the tiers.
//
// A Stack is safe for concurrent use.
type Stack struct {
	root *stackRoot
	ents []*stackEntry
	key  string // identifies the set of tiers in this view
	view bool   // made by Local or Without
	// origin: reads come from the view's source only (see WithOrigin),
	// unless proven (if set) says, inside the fill, that d may be read from
	// the tiers after all.
	origin bool
	proven func(context.Context, blob.Digest) bool
	// filled, if set, is called by a fill that read the view's source
	// completely (verified) after the tiers committed, before waiters go.
	filled func(context.Context, blob.Digest)
}

// stackRoot is what a stack and its views share.
type stackRoot struct {
	name      string
	all       []*stackEntry
	flights   flightGroup
	closed    atomic.Bool
	collapsed prometheus.Counter // nil without metrics
	metrics   *Metrics
}

type stackEntry struct {
	Entry
	idx  int
	name string
	// declines is the smallest size the tier declined with ErrTooLarge
	// (math.MaxInt64 while it has declined nothing).
	declines atomic.Int64
	wbOK     prometheus.Counter // write-back counters; nil without metrics
	wbNo     prometheus.Counter
	wbErr    prometheus.Counter
}

var _ blob.Tier = (*Stack)(nil)

// NewStack builds a stack over cfg.Tiers. It panics on a nil tier, which is
// a programming error.
func NewStack(cfg StackConfig) *Stack {
	name := cfg.Name
	if name == "" {
		name = "stack"
	}
	root := &stackRoot{name: name, metrics: cfg.Metrics}
	if cfg.Metrics != nil {
		root.collapsed = cfg.Metrics.collapsed.WithLabelValues(name)
	}
	for i, e := range cfg.Tiers {
		if e.Tier == nil {
			panic(fmt.Sprintf("tiers: NewStack %q: tier %d is nil", name, i))
		}
		se := &stackEntry{Entry: e, idx: i, name: e.Tier.Name()}
		se.Tier = Instrument(e.Tier, cfg.Metrics)
		se.declines.Store(math.MaxInt64)
		if m := cfg.Metrics; m != nil {
			se.wbOK = m.writeBacks.WithLabelValues(name, se.name, "ok")
			se.wbNo = m.writeBacks.WithLabelValues(name, se.name, "declined")
			se.wbErr = m.writeBacks.WithLabelValues(name, se.name, "error")
		}
		root.all = append(root.all, se)
	}
	st := root.view(root.all)
	st.view = false
	return st
}

func (r *stackRoot) view(ents []*stackEntry) *Stack {
	var b strings.Builder
	for i, e := range ents {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(e.idx))
	}
	return &Stack{root: r, ents: ents, key: b.String(), view: true}
}

func (s *Stack) isView() bool { return s.view }

// hasSource reports whether the view reads a source (see WithSource), whose
// fills other views with other sources join.
func (s *Stack) hasSource() bool {
	return slices.ContainsFunc(s.ents, func(e *stackEntry) bool { return e.idx < 0 })
}

// Name returns the stack's name.
func (s *Stack) Name() string { return s.root.name }

// Tiers returns the view's tiers, top to bottom, as the stack uses them
// (wrapped by Instrument when the stack has metrics).
func (s *Stack) Tiers() []Entry {
	out := make([]Entry, len(s.ents))
	for i, e := range s.ents {
		out[i] = e.Entry
	}
	return out
}

// Local returns a view of s without its shared tiers.
func (s *Stack) Local() *Stack {
	return s.root.view(slices.DeleteFunc(slices.Clone(s.ents), func(e *stackEntry) bool { return e.Shared }))
}

// Without returns a view of s without the tiers of the given names.
func (s *Stack) Without(names ...string) *Stack {
	return s.root.view(slices.DeleteFunc(slices.Clone(s.ents), func(e *stackEntry) bool { return slices.Contains(names, e.name) }))
}

func (s *Stack) errClosed(op string) error {
	return fmt.Errorf("stack %q: %s: %w: stack is closed", s.root.name, op, blob.ErrUnavailable)
}

// check validates the call's common preconditions.
func (s *Stack) check(ctx context.Context, op string) error {
	if s.root.closed.Load() {
		return s.errClosed(op)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("stack %q: %s: %w", s.root.name, op, err)
	}
	return nil
}

// misses collects why a top-down read found nothing.
type misses struct {
	notFound bool     // some tier answered with a miss
	skipped  []string // tiers skipped for other errors
	firstErr error    // the first error that was neither a miss nor unavailability
	origin   error    // the error of a view's source (see WithSource)
}

// note records tier e's error; it reports false if the read must stop
// (ctx ended, or the caller's input is invalid) and the error be returned.
func (m *misses) note(ctx context.Context, e *stackEntry, err error) bool {
	if e.idx < 0 {
		// A source is the origin: whatever it answered (a miss, a denial,
		// unreachable) is the view's answer, not hidden behind the tiers'
		// misses.
		m.origin = err
	}
	switch {
	case ctx.Err() != nil:
		return false
	case errors.Is(err, blob.ErrInvalidDigest), errors.Is(err, blob.ErrInvalidRef):
		return false
	case errors.Is(err, blob.ErrNotFound), errors.Is(err, blob.ErrMismatch):
		m.notFound = true
	case errors.Is(err, blob.ErrUnavailable):
		m.skipped = append(m.skipped, e.name+" (unavailable)")
	default:
		m.skipped = append(m.skipped, e.name+" ("+err.Error()+")")
		if m.firstErr == nil {
			m.firstErr = err
		}
	}
	return true
}

// clean reports whether no tier failed with a real error: every tier
// answered, or was unavailable (which retrying at once will not cure).
func (m *misses) clean() bool { return m.firstErr == nil }

// err is the stack's answer after a read found nothing: the source's error
// in a view with a source, else a miss if any tier said so (or there is no
// tier), else the first real error, else unavailability.
func (m *misses) err(stack, op, what string) error {
	sk := ""
	if len(m.skipped) > 0 {
		sk = " (skipped " + strings.Join(m.skipped, ", ") + ")"
	}
	switch {
	case m.origin != nil:
		return fmt.Errorf("stack %q: %s %s: %w", stack, op, what, m.origin)
	case m.notFound || (m.firstErr == nil && len(m.skipped) == 0):
		return fmt.Errorf("stack %q: %s %s: %w%s", stack, op, what, blob.ErrNotFound, sk)
	case m.firstErr != nil:
		return fmt.Errorf("stack %q: %s %s: %w%s", stack, op, what, m.firstErr, sk)
	default:
		return fmt.Errorf("stack %q: %s %s: %w%s", stack, op, what, blob.ErrUnavailable, sk)
	}
}

func (s *Stack) stop(ctx context.Context, op, what string, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		err = cerr
	}
	return fmt.Errorf("stack %q: %s %s: %w", s.root.name, op, what, err)
}

func served(info blob.Info, e *stackEntry) blob.Info {
	if info.Tier == "" {
		info.Tier = e.name
	}
	return info
}

// Stat returns the Info of the highest tier holding d; Info.Tier names it.
func (s *Stack) Stat(ctx context.Context, d blob.Digest) (blob.Info, error) {
	if err := s.check(ctx, "stat"); err != nil {
		return blob.Info{}, err
	}
	if err := validateDigest(d); err != nil {
		return blob.Info{}, fmt.Errorf("stack %q: stat: %w", s.root.name, err)
	}
	var m misses
	ents := s.ents
	if s.origin {
		ents = ents[len(ents)-1:]
	}
	for _, e := range ents {
		info, err := e.Tier.Stat(ctx, d)
		if err == nil {
			return served(info, e), nil
		}
		if !m.note(ctx, e, err) {
			return blob.Info{}, s.stop(ctx, "stat", string(d), err)
		}
	}
	return blob.Info{}, m.err(s.root.name, "stat", string(d))
}

// Open returns a reader over d from the highest tier holding it, filling the
// tiers above on the way (see Stack). Info.Tier names the tier that served
// the bytes. The caller must Close the reader; reads fail once ctx ends.
func (s *Stack) Open(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	if err := s.check(ctx, "open"); err != nil {
		return nil, blob.Info{}, err
	}
	if err := validateDigest(d); err != nil {
		return nil, blob.Info{}, fmt.Errorf("stack %q: open: %w", s.root.name, err)
	}
	if len(s.ents) < 2 {
		return s.openDirect(ctx, d)
	}
	if !s.origin {
		// Fast path: a hit at the top needs no flight.
		top := s.ents[0]
		rc, info, err := top.Tier.Open(ctx, d)
		if err == nil {
			return rc, served(info, top), nil
		}
		var m misses
		if !m.note(ctx, top, err) {
			return nil, blob.Info{}, s.stop(ctx, "open", string(d), err)
		}
	}
	const maxJoins = 3
	for joins := 0; ; {
		f, leader, gen := s.root.flights.join(ctx, s.key+"|"+string(d), d)
		if leader {
			go s.fill(f, d)
			res, left := f.awaitLead(ctx)
			if left {
				return nil, blob.Info{}, s.stop(ctx, "open", string(d), ctx.Err())
			}
			if res.err != nil {
				f.release()
				return nil, blob.Info{}, res.err
			}
			return newLeaderReader(ctx, res.rc, res.interrupt), res.info, nil
		}
		if s.root.collapsed != nil {
			s.root.collapsed.Inc()
		}
		select {
		case <-f.done:
			f.release()
		case <-ctx.Done():
			f.release()
			return nil, blob.Info{}, s.stop(ctx, "open", string(d), ctx.Err())
		}
		joins++
		switch {
		case f.err == nil:
			// The flight filled the tiers above, or found the blob where
			// the tiers above cannot take it: read top-down.
			return s.openDirect(ctx, d)
		case f.gen < gen:
			// The flight looked at the tiers before a write of d that
			// had completed when this caller joined: its miss may be
			// stale. Look again.
		case !f.retry:
			return nil, blob.Info{}, f.err
		}
		if joins >= maxJoins {
			return s.openDirect(ctx, d)
		}
		// The flight failed (its leader's source broke, or it was
		// cancelled) or is stale: try again, possibly as the leader.
	}
}

// openDirect reads top-down without a flight and without write-back.
func (s *Stack) openDirect(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	var m misses
	for _, e := range s.ents {
		rc, info, err := e.Tier.Open(ctx, d)
		if err == nil {
			return rc, served(info, e), nil
		}
		if !m.note(ctx, e, err) {
			return nil, blob.Info{}, s.stop(ctx, "open", string(d), err)
		}
	}
	return nil, blob.Info{}, m.err(s.root.name, "open", string(d))
}

// fill is a flight's work; it runs on its own goroutine and f.ctx.
func (s *Stack) fill(f *flight, d blob.Digest) {
	ctx := f.ctx
	var (
		m      misses
		uppers []*stackEntry // tiers above the hit that missed it
		hit    *stackEntry
		rc     io.ReadCloser
		info   blob.Info
	)
	fail := func(err error, retry bool) {
		f.finish(err, retry)
		f.handOff(leadResult{err: err})
		f.stop()
	}
	// Re-checked inside the flight: a fill that an earlier one of the same
	// origin made unnecessary reads the tiers like any fill.
	originOnly := s.origin && (s.proven == nil || !s.proven(ctx, d))
	for _, e := range s.ents {
		if originOnly && e.idx >= 0 {
			// An origin view reads its source only; every tier is
			// filled (a tier that holds the blob already returns from
			// its Put at once).
			uppers = append(uppers, e)
			continue
		}
		r, inf, err := e.Tier.Open(ctx, d)
		if err == nil {
			hit, rc, info = e, r, served(inf, e)
			break
		}
		if !m.note(ctx, e, err) {
			// The flight's context ended (everyone left) or the input
			// is invalid: only the former is worth retrying.
			fail(s.stop(ctx, "open", string(d), err), ctx.Err() != nil)
			return
		}
		if errors.Is(err, blob.ErrNotFound) || errors.Is(err, blob.ErrMismatch) {
			uppers = append(uppers, e)
		}
	}
	if hit == nil {
		// A clean miss is an answer; a miss with tiers skipped for
		// errors is not, nor is a miss of a view with a source (waiters
		// may have other sources): waiters retry.
		fail(m.err(s.root.name, "open", string(d)), !m.clean() || s.hasSource())
		return
	}
	uppers = slices.DeleteFunc(uppers, func(e *stackEntry) bool { return info.Size >= e.declines.Load() })
	if len(uppers) == 0 || info.Size < 0 {
		// Nothing to fill: hand the reader over as it is. The flight is
		// over for everyone else; its context now belongs to that reader.
		f.finish(nil, false)
		fr := &flightReader{rc: rc, stop: f.stop}
		if !f.handOff(leadResult{rc: fr, info: info, interrupt: f.stop}) {
			fr.Close()
		}
		return
	}
	if info.Size <= smallBlob {
		s.fillSmall(f, d, rc, info, uppers)
		return
	}
	s.tee(f, d, rc, info, uppers)
}

// fillSmall reads a small blob whole and verified, puts it into the upper
// tiers, and hands the leader the bytes: cheaper than a tee at this size.
func (s *Stack) fillSmall(f *flight, d blob.Digest, rc io.ReadCloser, info blob.Info, uppers []*stackEntry) {
	defer f.stop()
	buf, err := readVerified(rc, d, info.Size)
	rc.Close()
	if err != nil {
		err = fmt.Errorf("stack %q: open %s from tier %q: %w", s.root.name, d, info.Tier, err)
		f.finish(err, true)
		f.handOff(leadResult{err: err})
		return
	}
	f.settle()
	errs := make([]error, len(uppers))
	for i, e := range uppers {
		errs[i] = e.Tier.Put(f.ctx, d, info.Size, bytes.NewReader(buf))
	}
	s.root.flights.wrote(d)
	s.noteWriteBacks(uppers, info.Size, errs)
	s.noteFilled(f.ctx, d, info)
	f.finish(nil, false)
	f.handOff(leadResult{rc: io.NopCloser(bytes.NewReader(buf)), info: info, interrupt: func() {}})
}

// tee streams the lower tier's reader rc to the leader while tee-ing it into
// the Puts of the upper tiers, and ends the flight.
func (s *Stack) tee(f *flight, d blob.Digest, rc io.ReadCloser, info blob.Info, uppers []*stackEntry) {
	ctx := f.ctx
	defer f.stop()
	defer rc.Close()

	type putResult struct {
		i   int
		err error
	}
	sinks := make([]*sink, 0, len(uppers)+1)
	for range uppers {
		sinks = append(sinks, newSink(nil))
	}
	var ls *sink // the leader's
	if f.leaderWanted() {
		ls = newSink(nil)
		ls.onGone = f.release // once: sink.finish runs it at most once
		sinks = append(sinks, ls)
	}
	t := newTee(d, info.Size, sinks...) // before any reader can read a sink
	results := make(chan putResult, len(uppers))
	for i, e := range uppers {
		sk := sinks[i]
		go func() {
			err := e.Tier.Put(ctx, d, info.Size, sk)
			sk.Close()
			results <- putResult{i, err}
		}()
	}
	leaderIdx := -1
	if ls != nil {
		leaderIdx = len(uppers)
		if !f.handOff(leadResult{rc: ls, info: info, interrupt: func() { ls.Close() }}) {
			// The leader left (and dropped its reference) meanwhile;
			// nobody else has this sink.
			ls.onGone = nil
			ls.Close()
		}
	}
	err := t.run(ctx, blob.NewVerifier(rc, d, info.Size, nil))
	end := io.EOF
	if err == nil {
		f.settle() // the source verified: let the commits finish whoever is left
	} else {
		end = fmt.Errorf("stack %q: open %s from tier %q: %w", s.root.name, d, info.Tier, err)
	}
	for i := range uppers {
		t.terminate(i, end)
	}
	putErrs := make([]error, len(uppers))
	for range uppers {
		r := <-results
		putErrs[r.i] = r.err
	}
	if err == nil {
		s.root.flights.wrote(d) // before the leader's EOF
		s.noteWriteBacks(uppers, info.Size, putErrs)
		s.noteFilled(ctx, d, info)
	}
	if leaderIdx >= 0 {
		t.terminate(leaderIdx, end)
	}
	t.release()
	if err == nil {
		f.finish(nil, false)
	} else {
		f.finish(end, true)
	}
}

// noteFilled calls the view's filled hook when a fill read its source.
func (s *Stack) noteFilled(ctx context.Context, d blob.Digest, info blob.Info) {
	if s.filled != nil && s.hasSource() && info.Tier == s.ents[len(s.ents)-1].name {
		s.filled(ctx, d)
	}
}

// noteWriteBacks counts the outcome of each upper tier's Put and remembers
// the sizes tiers decline.
func (s *Stack) noteWriteBacks(uppers []*stackEntry, size int64, errs []error) {
	for i, e := range uppers {
		err := errs[i]
		if errors.Is(err, blob.ErrTooLarge) {
			e.noteDecline(size)
		}
		e.countWriteBack(err)
	}
}

func (e *stackEntry) noteDecline(size int64) {
	for {
		cur := e.declines.Load()
		if size >= cur || e.declines.CompareAndSwap(cur, size) {
			return
		}
	}
}

func (e *stackEntry) countWriteBack(err error) {
	if e.wbOK == nil {
		return
	}
	switch {
	case err == nil:
		e.wbOK.Inc()
	case errors.Is(err, blob.ErrTooLarge):
		e.wbNo.Inc()
	default:
		e.wbErr.Inc()
	}
}

// flightReader is a reader handed over by a flight that found nothing to
// fill; closing it ends the flight's context.
type flightReader struct {
	rc   io.ReadCloser
	stop context.CancelFunc
}

func (r *flightReader) Read(p []byte) (int, error) { return r.rc.Read(p) }

// VerifiedBlob implements blob.VerifiedReader when the tier's reader does.
func (r *flightReader) VerifiedBlob() (blob.Digest, int64) { return blob.VerifiedBlobOf(r.rc) }

func (r *flightReader) Close() error {
	err := r.rc.Close()
	r.stop()
	return err
}

// leaderReader gives a flight's reader to its leader under the leader's own
// context: reads fail with ctx's error once it ends, and its end interrupts
// a blocked read.
type leaderReader struct {
	rc        io.ReadCloser
	ctx       context.Context
	stopWatch func() bool
}

func newLeaderReader(ctx context.Context, rc io.ReadCloser, interrupt func()) *leaderReader {
	return &leaderReader{rc: rc, ctx: ctx, stopWatch: context.AfterFunc(ctx, interrupt)}
}

func (r *leaderReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := r.rc.Read(p)
	if err != nil && err != io.EOF {
		if cerr := r.ctx.Err(); cerr != nil {
			return n, cerr
		}
	}
	return n, err
}

// VerifiedBlob implements blob.VerifiedReader: the flight's stream ends with
// io.EOF only after its source verified.
func (r *leaderReader) VerifiedBlob() (blob.Digest, int64) { return blob.VerifiedBlobOf(r.rc) }

func (r *leaderReader) Close() error {
	r.stopWatch()
	return r.rc.Close()
}
