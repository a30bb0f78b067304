package tiertest

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/strata-oci/strata/blob"
)

// FaultKind is what a Faulty tier does wrong when serving a digest.
type FaultKind int

const (
	// FaultBreak: the reader fails with Fault.Err after Fault.At bytes
	// (a connection reset, an I/O error, a stall cut off by a timeout).
	FaultBreak FaultKind = iota + 1
	// FaultFlip: the byte at offset Fault.At is flipped. Models a stored
	// copy that rotted: it stays wrong until the copy is deleted (a Put of
	// the digest is idempotent and keeps it), unless Fault.Times limits it.
	FaultFlip
	// FaultTruncate: the reader ends (io.EOF) after Fault.At bytes.
	FaultTruncate
	// FaultLose: Stat and Open say blob.ErrNotFound, as if the entry were
	// lost.
	FaultLose
	// FaultOpenError: Open fails with Fault.Err.
	FaultOpenError
)

// Fault is one injected fault; see FaultKind.
type Fault struct {
	Kind FaultKind
	At   int64
	// Err is what FaultBreak and FaultOpenError fail with (default: an
	// error wrapping blob.ErrUnavailable).
	Err error
	// Times is the number of Opens the fault affects (0: every Open until
	// Clear, or, for FaultFlip, until Delete).
	Times int
	// FlipAt, for FaultBreak and FaultTruncate, if above zero, also flips
	// the byte at that offset (wrong bytes delivered before the break).
	FlipAt int64
	// Verify makes the served reader verify itself like a disk or remote
	// tier's (a *blob.MismatchError at EOF instead of wrong bytes ending
	// with io.EOF).
	Verify bool
}

// Faulty wraps a real tier and injects faults into the reads of chosen
// digests: the seam for a tier that misbehaves where no real damage can be
// made (a memory tier serving wrong bytes, a tier breaking mid-read). Every
// other call passes through. It is safe for concurrent use.
type Faulty struct {
	blob.Tier
	mu     sync.Mutex
	faults map[blob.Digest]*Fault
	opens  map[blob.Digest]int
}

// NewFaulty wraps t.
func NewFaulty(t blob.Tier) *Faulty {
	return &Faulty{Tier: t, faults: map[blob.Digest]*Fault{}, opens: map[blob.Digest]int{}}
}

// Inject sets the fault for d (replacing any).
func (f *Faulty) Inject(d blob.Digest, ft Fault) {
	if ft.Err == nil {
		ft.Err = fmt.Errorf("faulty tier %q: injected failure: %w", f.Name(), blob.ErrUnavailable)
	}
	f.mu.Lock()
	f.faults[d] = &ft
	f.mu.Unlock()
}

// Clear removes d's fault.
func (f *Faulty) Clear(d blob.Digest) {
	f.mu.Lock()
	delete(f.faults, d)
	f.mu.Unlock()
}

// Faulted reports whether d still has a fault (a flipped copy that was not
// deleted, say).
func (f *Faulty) Faulted(d blob.Digest) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.faults[d] != nil
}

// Opens returns how often d was opened.
func (f *Faulty) Opens(d blob.Digest) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.opens[d]
}

// take returns the fault an Open of d meets, using one of its Times.
func (f *Faulty) take(d blob.Digest, open bool) *Fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	if open {
		f.opens[d]++
	}
	ft := f.faults[d]
	if ft == nil {
		return nil
	}
	c := *ft
	if open && ft.Times > 0 {
		ft.Times--
		if ft.Times == 0 {
			delete(f.faults, d)
		}
	}
	return &c
}

// Stat implements blob.CAS.
func (f *Faulty) Stat(ctx context.Context, d blob.Digest) (blob.Info, error) {
	if ft := f.take(d, false); ft != nil && ft.Kind == FaultLose {
		return blob.Info{}, fmt.Errorf("faulty tier %q: stat %s: %w (lost)", f.Name(), d, blob.ErrNotFound)
	}
	return f.Tier.Stat(ctx, d)
}

// Open implements blob.CAS.
func (f *Faulty) Open(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	ft := f.take(d, true)
	if ft != nil {
		switch ft.Kind {
		case FaultLose:
			return nil, blob.Info{}, fmt.Errorf("faulty tier %q: open %s: %w (lost)", f.Name(), d, blob.ErrNotFound)
		case FaultOpenError:
			return nil, blob.Info{}, ft.Err
		}
	}
	rc, info, err := f.Tier.Open(ctx, d)
	if err != nil || ft == nil {
		return rc, info, err
	}
	var r io.ReadCloser = &faultReader{rc: rc, ft: *ft}
	if ft.Verify {
		r = blob.NewVerifier(r, d, info.Size, nil)
	}
	return r, info, nil
}

// Delete implements blob.CAS; it also removes d's fault (the bad copy is
// gone).
func (f *Faulty) Delete(ctx context.Context, d blob.Digest) error {
	f.Clear(d)
	return f.Tier.Delete(ctx, d)
}

// faultReader applies one fault to a reader.
type faultReader struct {
	rc  io.ReadCloser
	ft  Fault
	off int64
}

func (r *faultReader) Read(p []byte) (int, error) {
	switch r.ft.Kind {
	case FaultBreak, FaultTruncate:
		if r.off >= r.ft.At {
			if r.ft.Kind == FaultBreak {
				return 0, r.ft.Err
			}
			return 0, io.EOF
		}
		if rem := r.ft.At - r.off; int64(len(p)) > rem {
			p = p[:rem]
		}
	}
	n, err := r.rc.Read(p)
	flip := int64(-1)
	switch {
	case r.ft.Kind == FaultFlip:
		flip = r.ft.At
	case r.ft.FlipAt > 0:
		flip = r.ft.FlipAt
	}
	if flip >= r.off && flip < r.off+int64(n) {
		p[flip-r.off] ^= 0xff
	}
	r.off += int64(n)
	return n, err
}

func (r *faultReader) Close() error { return r.rc.Close() }
