package tiers

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"

	"github.com/strata-oci/strata/blob"
)

// failover is the stream a stack hands out for one blob: it reads the blob
// from one source (a tier of the view, or its source) and, when that source
// fails mid-stream, continues from the next one in the same read.
//
// It returns io.EOF only after exactly size bytes hashing to d were
// delivered, so it is a blob.VerifiedReader of d whatever its sources are.
// Each byte is hashed once, by whoever checks it (see check):
//   - a source whose reader verifies itself (a blob.VerifiedReader of d and
//     size that is also a blob.PrefixHasher: the disk and REAPI tiers') is
//     not hashed again: its io.EOF is the check, and when it fails after k
//     bytes its PrefixState is the hash of the k bytes delivered;
//   - bytes from a trusted tier (Entry.Trusted) are not hashed: while every
//     byte came from one, the end checks the size only;
//   - any other source is hashed as it is delivered, and the end checks
//     the hash.
//
// When source A fails after k bytes were delivered, the next source B is
// opened and its first k bytes are read and hashed (by B itself when it
// verifies itself): only if they hash like A's delivered prefix does the
// stream go on with B's remaining bytes, so the bytes delivered are B's
// from its first byte on, which B (or the running hash, continued from B's
// first k bytes) verifies at the end; otherwise the read fails with an
// error wrapping blob.ErrMismatch (the caller was handed bytes that B does
// not hold, and never gets an io.EOF for them). A prefix from a trusted
// tier is the blob's: B is not compared with it, but verified from its
// first byte. When A fails after delivering size bytes, those bytes are the
// blob or they are not: no other source is asked. When A verifies itself
// but cannot tell the hash of the k bytes it delivered, the read fails.
//
// A source that served wrong bytes is marked bad in the stack (see
// badCopies) and remembered in bad, for the owner of the stream to repair.
//
// Not safe for concurrent Reads; Close may be called once reading is over
// or from the goroutine that reads.
type failover struct {
	s    *Stack
	ctx  context.Context
	d    blob.Digest
	size int64 // < 0: unknown; then only the digest is checked

	cur  *stackEntry   // the source being read
	rc   io.ReadCloser // cur's reader; nil once closed
	next []*stackEntry // the sources still to try, in order

	h     hash.Hash // of the bytes delivered, while check is checkHash
	n     int64     // bytes delivered
	check check     // who checks the bytes delivered

	pend error // the current source's end (io.EOF or its error), acted on at the next Read
	err  error // sticky: io.EOF after success, or the error that ended the read

	tried []string      // "tier (error)" of every source that failed, for the final error
	bad   []*stackEntry // tiers that served wrong bytes during this read

	// repairAtEOF: once verified, repair the bad tiers from the stack
	// (set when nobody else will: see Stack.repairLater).
	repairAtEOF bool
	// noResume: fail at the first source failure (the reader restarts
	// elsewhere from the first byte itself).
	noResume bool
}

// check says who checks the bytes a failover delivers.
type check uint8

const (
	// checkHash: the failover hashes them (h), and checks the hash at the
	// end.
	checkHash check = iota
	// checkTrusted: every byte delivered came from a trusted tier: the end
	// checks the size only.
	checkTrusted
	// checkSource: the bytes delivered are the current source's from its
	// first byte on (or were proven to hash like them), and its reader
	// verifies them (selfVerifying): its io.EOF is the check.
	checkSource
)

// newFailover returns the stream of d from cur (whose reader is rc and
// whose Info said size), failing over to next in order.
func (s *Stack) newFailover(ctx context.Context, d blob.Digest, size int64, cur *stackEntry, rc io.ReadCloser, next []*stackEntry) *failover {
	f := &failover{s: s, ctx: ctx, d: d, size: size, cur: cur, rc: rc, next: next}
	switch {
	case cur.Trusted:
		f.check = checkTrusted
	case f.selfVerifying(rc):
		f.check = checkSource
	default:
		f.h = sha256.New()
	}
	return f
}

// selfVerifying reports whether rc, just opened, verifies d itself (a
// blob.VerifiedReader of d and f's size, or of d when f's size is unknown)
// and can tell the hash of what it yields (a blob.PrefixHasher that
// answers).
func (f *failover) selfVerifying(rc io.Reader) bool {
	vd, vn := blob.VerifiedBlobOf(rc)
	if f.d == "" || vd != f.d || (vn != f.size && f.size >= 0) {
		return false
	}
	h, n := blob.PrefixStateOf(rc)
	return h != nil && n == 0
}

// openFrom opens d from the first of ents that holds it (skipping tiers
// marked bad for d, which count as misses) and returns a failover stream
// over it and the tiers after it. When none holds it, fo is nil and m says
// why, unless stopErr is set: the read must stop with it (see misses.note).
func (s *Stack) openFrom(ctx context.Context, d blob.Digest, ents []*stackEntry, m *misses) (fo *failover, info blob.Info, stopErr error) {
	for i, e := range ents {
		if s.root.bad.has(e, d) {
			m.notFound = true
			continue
		}
		rc, inf, err := e.open(ctx, d)
		if err == nil {
			return s.newFailover(ctx, d, inf.Size, e, rc, ents[i+1:]), served(inf, e), nil
		}
		s.noteOpenErr(e, d, err)
		if !m.note(ctx, e, err) {
			return nil, blob.Info{}, err
		}
	}
	return nil, blob.Info{}, nil
}

// VerifiedBlob implements blob.VerifiedReader.
func (f *failover) VerifiedBlob() (blob.Digest, int64) { return f.d, f.size }

// Read implements io.Reader.
func (f *failover) Read(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if f.rc == nil && f.pend == nil {
			return 0, errSinkClosed
		}
		if f.pend != nil {
			if err := f.recover(); err != nil {
				f.fail(err)
				return 0, f.err
			}
			if f.err != nil { // verified
				return 0, f.err
			}
			continue
		}
		if f.size >= 0 {
			// One byte beyond the size shows an overlong source.
			if rem := f.size - f.n; int64(len(p)) > rem {
				p = p[:rem+1]
			}
		}
		n, err := f.rc.Read(p)
		if f.size >= 0 && f.n+int64(n) > f.size {
			err = &blob.MismatchError{Want: f.d, WantSize: f.size, GotSize: f.n + int64(n)}
			n = int(f.size - f.n) // deliver the blob's bytes only
		}
		if n > 0 {
			if f.check == checkHash {
				f.h.Write(p[:n])
			}
			f.n += int64(n)
		}
		if err != nil {
			f.pend = err
		}
		if n > 0 || err == nil {
			return n, nil
		}
	}
}

// sum reports, at the current source's io.EOF, whether the bytes delivered
// are the blob (or, when they all came from a trusted tier, have its size;
// or, when the source verifies itself, have its size: its io.EOF says they
// are the blob).
func (f *failover) sum() (blob.Digest, bool) {
	if f.check != checkHash {
		return f.d, f.size < 0 || f.n == f.size
	}
	got := blob.NewDigestFromHash(f.h)
	return got, got == f.d && (f.size < 0 || f.n == f.size)
}

// deliveredHash returns the hash of the bytes delivered, from the current
// source (which must not be closed yet) when it checks them itself, or nil
// when it is unknown (trusted bytes, or a source that cannot tell).
func (f *failover) deliveredHash() hash.Hash {
	switch f.check {
	case checkHash:
		return f.h
	case checkSource:
		if h, n := blob.PrefixStateOf(f.rc); h != nil && n == f.n {
			return h
		}
	}
	return nil
}

// recover acts on the current source's end: it verifies at io.EOF, or moves
// on to the next source after a failure. It returns nil when the stream may
// go on (f.err is io.EOF if it is complete), or the error that ends it.
func (f *failover) recover() error {
	srcErr := f.pend
	f.pend = nil
	if srcErr == io.EOF {
		got, ok := f.sum()
		if ok {
			f.succeed()
			return nil
		}
		srcErr = &blob.MismatchError{Want: f.d, WantSize: f.size, Got: got, GotSize: f.n}
		if f.size >= 0 && f.n != f.size {
			srcErr = &blob.MismatchError{Want: f.d, WantSize: f.size, GotSize: f.n}
		}
	}
	failed := f.cur
	if err := f.ctx.Err(); err != nil {
		return f.wrap(failed, err)
	}
	// The hash of what was delivered, asked of the source before it is
	// closed.
	prefix := f.deliveredHash()
	f.closeSource()
	f.noteFailure(failed, srcErr, false)
	if f.size >= 0 && f.n == f.size {
		// Every byte was delivered: they are the blob or they are not.
		if f.check == checkTrusted || (prefix != nil && blob.NewDigestFromHash(prefix) == f.d) {
			f.succeed()
			return nil
		}
		return f.wrap(failed, srcErr)
	}
	if f.noResume {
		return f.wrap(failed, srcErr)
	}
	if f.n > 0 && f.check != checkTrusted && prefix == nil {
		// The source verified itself but cannot tell what it delivered:
		// nothing to compare another copy with.
		return f.wrap(failed, srcErr)
	}
	var prefixSum []byte
	if prefix != nil {
		prefixSum = prefix.Sum(nil)
	}
	for len(f.next) > 0 {
		e := f.next[0]
		f.next = f.next[1:]
		if f.s.root.bad.has(e, f.d) {
			continue
		}
		rc, info, err := e.open(f.ctx, f.d)
		if err != nil {
			if cerr := f.ctx.Err(); cerr != nil {
				return f.wrap(failed, cerr)
			}
			f.s.noteOpenErr(e, f.d, err)
			f.tried = append(f.tried, e.name+" ("+err.Error()+")")
			continue
		}
		if f.size >= 0 && info.Size >= 0 && info.Size != f.size {
			rc.Close()
			f.tried = append(f.tried, fmt.Sprintf("%s (holds %d bytes, want %d)", e.name, info.Size, f.size))
			continue
		}
		// e's first f.n bytes, hashed by e itself when it verifies itself
		// (it checks them again at its end), else here.
		self := f.selfVerifying(rc)
		var hb hash.Hash
		if f.n > 0 {
			var sink io.Writer = io.Discard
			if !self {
				hb = sha256.New()
				sink = hb
			}
			if _, err := io.CopyN(sink, rc, f.n); err != nil {
				rc.Close()
				if cerr := f.ctx.Err(); cerr != nil {
					return f.wrap(failed, cerr)
				}
				f.noteFailure(e, err, true)
				continue
			}
			if self && prefixSum != nil {
				var n int64
				if hb, n = blob.PrefixStateOf(rc); hb == nil || n != f.n {
					rc.Close()
					f.tried = append(f.tried, e.name+" (cannot tell the hash of its first bytes)")
					continue
				}
			}
			// A prefix from a trusted tier is the blob's: e's own copy is
			// verified from its first byte instead (by e itself, or by
			// hashing it on from hb).
			if prefixSum != nil && !bytes.Equal(hb.Sum(nil), prefixSum) {
				rc.Close()
				return fmt.Errorf("stack %q: read %s: %w: the first %d bytes, served by tier %q before it failed (%v), differ from tier %q's copy",
					f.s.root.name, f.d, blob.ErrMismatch, f.n, failed.name, srcErr, e.name)
			}
		}
		f.s.countFailover(failed, e)
		f.s.root.log.Warn("tier failed mid-read; continuing from the next source",
			"stack", f.s.root.name, "digest", string(f.d), "tier", failed.name, "offset", f.n, "next", e.name, "err", srcErr)
		f.cur, f.rc = e, rc
		if self {
			f.check, f.h = checkSource, nil
		} else {
			if hb == nil {
				hb = sha256.New()
			}
			f.check, f.h = checkHash, hb
		}
		return nil
	}
	return f.wrap(failed, srcErr)
}

// wrap names the stack, the digest, the source whose failure err is, and
// the other sources that were tried.
func (f *failover) wrap(failed *stackEntry, err error) error {
	tried := ""
	if len(f.tried) > 0 {
		tried = " (then tried: " + strings.Join(f.tried, "; ") + ")"
	}
	return fmt.Errorf("stack %q: read %s from tier %q at byte %d: %w%s", f.s.root.name, f.d, failed.name, f.n, err, tried)
}

// noteFailure records that source e failed mid-read with err; list adds it
// to the sources named in the final error.
func (f *failover) noteFailure(e *stackEntry, err error, list bool) {
	if list {
		f.tried = append(f.tried, e.name+" ("+err.Error()+")")
	}
	if errors.Is(err, blob.ErrMismatch) && e.idx >= 0 {
		f.s.root.markBad(e, f.d, err)
		f.bad = append(f.bad, e)
	}
}

func (f *failover) succeed() {
	f.err = io.EOF
	f.closeSource()
	if f.repairAtEOF && len(f.bad) > 0 {
		f.s.repairLater(f.d, f.size, f.bad)
	}
}

func (f *failover) fail(err error) {
	f.err = err
	f.closeSource()
}

func (f *failover) closeSource() {
	if f.rc != nil {
		f.rc.Close()
		f.rc = nil
	}
}

// Close implements io.Closer. It is safe to call more than once; Reads
// after it fail.
func (f *failover) Close() error {
	if f.err == nil {
		f.err = errSinkClosed
	}
	if f.rc == nil {
		return nil
	}
	err := f.rc.Close()
	f.rc = nil
	return err
}

// source is the entry whose bytes ended the stream (the last one read).
func (f *failover) source() *stackEntry { return f.cur }
