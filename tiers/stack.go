package tiers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
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
	// Trusted marks a tier whose readers never yield wrong bytes, only
	// fewer (the memory tier: it verified every blob as it was stored, and
	// memory does not rot). The stack does not hash what it streams from a
	// trusted tier; when such a read breaks, the bytes it delivered are
	// taken as the blob's and the next source is verified from its first
	// byte instead. A tier that can serve wrong bytes must not be marked.
	Trusted bool
}

// StackConfig configures a Stack.
type StackConfig struct {
	// Name identifies the stack in errors and metrics (default "stack").
	Name string
	// Tiers are ordered top (fastest) to bottom. Tier names should be
	// unique: metrics and errors tell tiers apart by name.
	Tiers []Entry
	// Metrics, if set, wraps every tier with Instrument and counts the
	// stack's collapsed reads, write-backs, fail-overs, bad copies and
	// repairs.
	Metrics *Metrics
	// Logger receives a line for every tier that fails mid-read, serves a
	// bad copy, or is repaired, and for every tier that fails a Put or
	// PutRef the others took (the caller sees success) (default: discard).
	Logger *slog.Logger
}

// Stack is an ordered list of tiers that is itself a blob.Tier.
//
// Reads (Stat, Open, GetRef) go top-down and return the first hit. A tier
// that is unavailable or fails is skipped, not fatal; a miss everywhere wraps
// blob.ErrNotFound and names the tiers that were skipped. A tier's Open that
// fails with a mismatch counts as that tier's miss.
//
// A broken tier does not fail a read that another source can serve. Every
// reader Open returns hashes what it delivers (except from a Trusted tier,
// or from a tier whose reader verifies itself and can tell the hash of what
// it yielded: a blob.VerifiedReader and blob.PrefixHasher, as the disk and
// REAPI tiers' are) and ends with io.EOF only after exactly the blob was
// delivered (it is a blob.VerifiedReader, over any tier). When the tier serving it fails
// mid-stream — an error, a reset, blob.ErrUnavailable from a tier's
// progress timeout, wrong bytes shown at the end — the read goes on from
// the next tier (or the source, in OpenOrFill) in the same call: from the start if
// nothing was delivered yet, else at the offset delivered, after the next
// source's first bytes were read and found to hash like those delivered.
// If they differ, or the failing tier had already delivered the whole blob
// and it did not verify, the bytes the caller holds are wrong and cannot be
// taken back: the read fails with an error wrapping blob.ErrMismatch (never
// io.EOF), and a new Open succeeds from the remaining sources. Blobs of at
// most 64 KiB that are filled are read whole before anyone sees a byte, so
// any failing source is replaced transparently. The caller sees one correct
// stream, or one error naming the failed tier and the sources tried after
// it.
//
// A tier that served wrong bytes for a blob (a mismatch) has its copy
// marked bad for 10 minutes (at most 4096 marks): reads and Stat skip it,
// strata_tier_bad_copies_total counts it and the Logger says so. Once
// verified bytes were read from another tier or source, the stack writes
// them over the bad copy — with the tier's Repair when it is a Repairer,
// else Delete and Put — while filling (the copy is a fill's upper tier), or
// afterwards in the background from the tiers that now hold the blob (never
// from a source), and clears the mark when the tier took them.
//
// Open of a blob that the top tier lacks is a fill: concurrent fills of one
// digest in one view collapse into one flight, which re-checks the tiers
// top-down, opens the highest tier that holds the blob once, and streams it
// to the caller that started the flight (the leader) while tee-ing it into
// the Put of every upper tier that missed it. Each upper Put verifies and
// commits on its own; none of them is fed a byte beyond what the source
// verified, and a source that fails without another to go on from (see
// above), or a leader that stops reading with nobody else waiting, ends the
// fill with nothing committed above. The leader's reader reports io.EOF
// only after the upper tiers have committed (or failed), so once it has
// read a blob to the end, the blob is in the tiers above. Callers that joined the flight wait for it and then read
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
// Fill streams a blob from a source the caller names (a registry) into the
// tiers, and OpenOrFill reads the tiers with such a source below them: see
// there. Who may read what is the caller's business, never the stack's.
//
// Local returns a view of the same stack without its shared tiers, for one
// request. Views share the parent's tiers and flights (keyed by view), and
// only the root stack's Close closes the tiers.
//
// A Stack is safe for concurrent use.
type Stack struct {
	root *stackRoot
	ents []*stackEntry
	key  string // identifies the set of tiers (and the source) of this view
	view bool   // made by Local, or for one call with a source
	// sourceOnly: the view's reads come from its source alone (see Fill).
	sourceOnly bool
}

// stackRoot is what a stack and its views share.
type stackRoot struct {
	name      string
	all       []*stackEntry
	flights   flightGroup
	closed    atomic.Bool
	collapsed prometheus.Counter // nil without metrics
	metrics   *Metrics
	log       *slog.Logger
	bad       badCopies
	meters    sync.Map // source name -> *instrumented (see sourceMeter)

	// Background repairs (see repairLater); Close stops and waits for them.
	repairMu      sync.Mutex
	repairsClosed bool
	repairStop    chan struct{}
	repairs       sync.WaitGroup
}

type stackEntry struct {
	Entry
	idx  int // in the root stack; -1 for a source
	name string
	// src is the source of a view with one (Tier is nil then), which
	// serves srcSize bytes; meter measures it (nil without metrics).
	src     Source
	srcSize int64
	meter   *instrumented
	// declines is the smallest size the tier declined with ErrTooLarge
	// (math.MaxInt64 while it has declined nothing).
	declines  atomic.Int64
	wbOK      prometheus.Counter // write-back counters; nil without metrics
	wbNo      prometheus.Counter
	wbErr     prometheus.Counter
	badCopies prometheus.Counter // nil without metrics
}

var _ blob.Tier = (*Stack)(nil)

// NewStack builds a stack over cfg.Tiers. It panics on a nil tier, which is
// a programming error.
func NewStack(cfg StackConfig) *Stack {
	name := cfg.Name
	if name == "" {
		name = "stack"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	root := &stackRoot{name: name, metrics: cfg.Metrics, log: log, repairStop: make(chan struct{})}
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
			se.badCopies = m.badCopies.WithLabelValues(se.name)
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

// hasSource reports whether the view reads a source (see Fill), whose
// fills other callers of the same source key join (with credentials of
// their own: a miss through one caller's is not another's answer).
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
	source   error    // the error of a view's source (see Fill)
}

// note records tier e's error; it reports false if the read must stop
// (ctx ended, or the caller's input is invalid) and the error be returned.
func (m *misses) note(ctx context.Context, e *stackEntry, err error) bool {
	if e.idx < 0 {
		// The source is the last word: whatever it answered (a miss, a denial,
		// unreachable) is the view's answer, not hidden behind the tiers'
		// misses.
		m.source = err
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
	case m.source != nil:
		return fmt.Errorf("stack %q: %s %s: %w", stack, op, what, m.source)
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
	if err := blob.ValidateDigest(d); err != nil {
		return blob.Info{}, fmt.Errorf("stack %q: stat: %w", s.root.name, err)
	}
	var m misses
	for _, e := range s.ents {
		if s.root.bad.has(e, d) {
			m.notFound = true // a bad copy is no copy
			continue
		}
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
// tiers above on the way and failing over to lower tiers mid-stream (see
// Stack). Info.Tier names the tier that started serving the bytes. The
// reader is a blob.VerifiedReader of d. The caller must Close it; reads
// fail once ctx ends.
func (s *Stack) Open(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	if err := s.check(ctx, "open"); err != nil {
		return nil, blob.Info{}, err
	}
	if err := blob.ValidateDigest(d); err != nil {
		return nil, blob.Info{}, fmt.Errorf("stack %q: open: %w", s.root.name, err)
	}
	if len(s.ents) < 2 {
		return s.openDirect(ctx, d, false)
	}
	if top := s.ents[0]; !s.sourceOnly && !s.root.bad.has(top, d) {
		// Fast path: a hit at the top needs no flight.
		rc, info, err := top.open(ctx, d)
		if err == nil {
			fo := s.newFailover(ctx, d, info.Size, top, rc, s.ents[1:])
			fo.repairAtEOF = true
			return fo, served(info, top), nil
		}
		s.noteOpenErr(top, d, err)
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
			return s.openDirect(ctx, d, f.filled)
		case f.gen < gen:
			// The flight looked at the tiers before a write of d that
			// had completed when this caller joined: its miss may be
			// stale. Look again.
		case !f.retry:
			return nil, blob.Info{}, f.err
		}
		if joins >= maxJoins {
			return s.openDirect(ctx, d, false)
		}
		// The flight failed (its leader's source broke, or it was
		// cancelled) or is stale: try again, possibly as the leader.
	}
}

// openDirect reads top-down without a flight and without write-back (a
// bad copy met on the way is repaired once the read verified). filled
// says that the caller joined a flight that read the view's source to its
// verified end and wrote it into the tiers.
func (s *Stack) openDirect(ctx context.Context, d blob.Digest, filled bool) (io.ReadCloser, blob.Info, error) {
	var m misses
	ents := s.ents
	if s.sourceOnly && !filled {
		// A Fill reads its source only, unless the fill this caller
		// joined has just read the same key's source to the end: a
		// caller that gave up waiting for fills, or joined one that
		// read nothing, must not fall back on copies that other
		// sources put in the tiers.
		ents = ents[len(ents)-1:]
	}
	fo, info, err := s.openFrom(ctx, d, ents, &m)
	if err != nil {
		return nil, blob.Info{}, s.stop(ctx, "open", string(d), err)
	}
	if fo == nil {
		return nil, blob.Info{}, m.err(s.root.name, "open", string(d))
	}
	fo.repairAtEOF = true
	return fo, info, nil
}

// fill is a flight's work; it runs on its own goroutine and f.ctx.
func (s *Stack) fill(f *flight, d blob.Digest) {
	ctx := f.ctx
	var (
		m      misses
		uppers []*stackEntry // tiers above the hit that missed it
		repair []bool        // per upper: its copy is bad, repair it
		hit    *stackEntry
		rest   []*stackEntry // the sources below the hit
		rc     io.ReadCloser
		info   blob.Info
	)
	fail := func(err error, retry bool) {
		f.finish(err, retry)
		f.handOff(leadResult{err: err})
		f.stop()
	}
	for i, e := range s.ents {
		if bad := s.root.bad.has(e, d); bad || (s.sourceOnly && e.idx >= 0) {
			// A Fill reads its source only; every tier is filled (a
			// tier that holds the blob already returns from its Put at
			// once). A tier whose copy is bad is not read: it is
			// written over.
			uppers, repair = append(uppers, e), append(repair, bad)
			if bad {
				m.notFound = true
			}
			continue
		}
		r, inf, err := e.open(ctx, d)
		if err == nil {
			hit, rc, info, rest = e, r, served(inf, e), s.ents[i+1:]
			break
		}
		s.noteOpenErr(e, d, err)
		if !m.note(ctx, e, err) {
			// The flight's context ended (everyone left) or the input
			// is invalid: only the former is worth retrying.
			fail(s.stop(ctx, "open", string(d), err), ctx.Err() != nil)
			return
		}
		if errors.Is(err, blob.ErrNotFound) || errors.Is(err, blob.ErrMismatch) {
			uppers, repair = append(uppers, e), append(repair, s.root.bad.has(e, d))
		}
	}
	if hit == nil {
		// A clean miss is an answer; a miss with tiers skipped for
		// errors is not, nor is a miss of a view with a source (waiters
		// may have other sources): waiters retry.
		fail(m.err(s.root.name, "open", string(d)), !m.clean() || s.hasSource())
		return
	}
	for i := len(uppers) - 1; i >= 0; i-- {
		if info.Size >= uppers[i].declines.Load() {
			uppers, repair = slices.Delete(uppers, i, i+1), slices.Delete(repair, i, i+1)
		}
	}
	fo := s.newFailover(ctx, d, info.Size, hit, rc, rest)
	if len(uppers) == 0 || info.Size < 0 {
		// Nothing to fill: hand the reader over as it is. The flight is
		// over for everyone else; its context now belongs to that reader.
		f.finish(nil, false)
		fo.repairAtEOF = true
		fr := &flightReader{rc: fo, stop: f.stop}
		if !f.handOff(leadResult{rc: fr, info: info, interrupt: f.stop}) {
			fr.Close()
		}
		return
	}
	if info.Size <= smallBlob {
		s.fillSmall(f, d, fo, info, uppers, repair)
		return
	}
	s.tee(f, d, fo, info, uppers, repair)
}

// fillSmall reads a small blob whole and verified, puts it into the upper
// tiers, and hands the leader the bytes: cheaper than a tee at this size.
// As no byte has reached anyone before the blob verified, a source that
// fails is simply replaced by the next one, from the start.
func (s *Stack) fillSmall(f *flight, d blob.Digest, fo *failover, info blob.Info, uppers []*stackEntry, repair []bool) {
	defer f.stop()
	ctx := f.ctx
	var (
		buf      []byte
		bad      []*stackEntry
		firstErr error
	)
	for {
		fo.noResume = true
		b, err := readVerified(fo, d, info.Size)
		fo.Close()
		bad = append(bad, fo.bad...)
		if err == nil {
			buf = b
			break
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
		var m misses
		next, _, stopErr := s.openFrom(ctx, d, fo.next, &m)
		if stopErr != nil || next == nil {
			break
		}
		if next.size != info.Size {
			next.Close()
			break
		}
		s.countFailover(fo.cur, next.cur)
		fo = next
	}
	if buf == nil {
		err := fmt.Errorf("stack %q: open %s from tier %q: %w", s.root.name, d, info.Tier, firstErr)
		f.finish(err, true)
		f.handOff(leadResult{err: err})
		return
	}
	f.settle()
	errs := make([]error, len(uppers))
	for i, e := range uppers {
		errs[i] = s.putUpper(f.ctx, e, repair[i], d, info.Size, bytes.NewReader(buf))
	}
	for _, e := range bad {
		if !slices.Contains(uppers, e) {
			s.putUpper(f.ctx, e, true, d, info.Size, bytes.NewReader(buf))
		}
	}
	s.root.flights.wrote(d)
	s.noteWriteBacks(uppers, info.Size, errs)
	f.filled = true
	f.finish(nil, false)
	f.handOff(leadResult{rc: io.NopCloser(bytes.NewReader(buf)), info: info, interrupt: func() {}})
}

// tee streams the source fo to the leader while tee-ing it into the Puts
// (or repairs) of the upper tiers, and ends the flight.
func (s *Stack) tee(f *flight, d blob.Digest, fo *failover, info blob.Info, uppers []*stackEntry, repair []bool) {
	ctx := f.ctx
	defer f.stop()
	defer fo.Close()

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
			err := s.putUpper(ctx, e, repair[i], d, info.Size, sk)
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
	// fo verifies, and fails over mid-stream (see failover).
	err := t.run(ctx, fo)
	end := io.EOF
	switch {
	case err == nil:
		f.settle() // the source verified: let the commits finish whoever is left
	case err == fo.err:
		end = err // names the stack, the digest and the sources
	default:
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
		f.filled = true
		if len(fo.bad) > 0 {
			s.repairLater(d, info.Size, fo.bad) // from the tiers just filled
		}
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
