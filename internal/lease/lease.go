// Package lease lets executors that share one store (the REAPI tier) agree
// on who fills a blob, so that a fleet starting the same image pulls each
// blob from its registry once instead of once per executor.
//
// A lease is a short-lived, signed record "holder H fills K, generation G,
// until T", kept in the shared store as a ref whose target is the record
// itself: the record is a small JSON blob put in the CAS first, and the ref
// (an ActionCache entry on a REAPI server) points at it, so strict servers,
// which refuse entries whose outputs are missing, accept it. The ref's media
// type carries an HMAC of the key and the record's digest under the fleet's
// secret key; a record without a valid signature, for another key, of an
// unknown version or expired is no lease.
//
// The store has no compare-and-swap (an ActionCache update is last writer
// wins), so Acquire writes and then reads back after a settling delay: the
// writer whose record is there leads, everyone else follows it. Two
// executors can both believe they lead when one reads back before the
// other's write lands; then both fill, which costs one extra pull and never
// correctness. Leases are an optimisation: a follower that reaches its own
// deadline fills by itself, and every byte is verified whoever wrote it.
//
// Fencing is by generation: taking over an expired or failed lease writes
// generation G+1, and a holder that finds a higher generation (or another
// holder) when it renews has lost the lease.
package lease

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/refsig"
)

// Namespace is the ref namespace of leases.
const Namespace = "lease"

// MediaType is the media type of a lease record (before its signature).
const MediaType = "application/vnd.strata.lease.v1+json"

// version is the record format version; docs/reapi.md documents it.
const version = 1

// refMargin is how long a lease's ref outlives the record's expiry.
const refMargin = 10 * time.Minute

// maxRecord bounds the lease record a reader accepts.
const maxRecord = 4 << 10

// States of a lease record.
const (
	StateFilling = "filling" // the holder is filling the blob
	StateFailed  = "failed"  // the holder gave up: anyone may take over now
	// StateUnshared: the holder has the blob but could not put it in the
	// shared store; waiting is pointless, every follower fills by itself.
	StateUnshared = "unshared"
)

// ErrDeadline is returned by Wait when the follower's own deadline came
// before the blob: the caller fills by itself.
var ErrDeadline = errors.New("lease: waited until the follower's deadline")

// Store is what leases need of the shared store: a CAS for the records and
// refs naming them. A blob.Tier is one.
type Store interface {
	Put(ctx context.Context, d blob.Digest, size int64, r io.Reader) error
	Open(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error)
	GetRef(ctx context.Context, k blob.RefKey) (blob.Ref, error)
	PutRef(ctx context.Context, k blob.RefKey, r blob.Ref) error
	DeleteRef(ctx context.Context, k blob.RefKey) error
}

// Record is one lease as stored.
type Record struct {
	Version    int       `json:"version"`
	Key        string    `json:"key"`    // the lease's blob.RefKey, as a string
	Holder     string    `json:"holder"` // the holding Leaser's random identity
	Generation uint64    `json:"generation"`
	State      string    `json:"state"`
	Size       int64     `json:"size"` // the size of the blob being filled
	Acquired   time.Time `json:"acquired"`
	Expires    time.Time `json:"expires"`
}

// Live reports whether r binds others at now: a filling record that has
// not expired.
func (r Record) Live(now time.Time) bool {
	return r.State == StateFilling && now.Before(r.Expires)
}

// Config configures a Leaser.
type Config struct {
	// Store is the shared store the leases live in.
	Store Store
	// Key signs and verifies records: the fleet's secret key (at least 32
	// bytes). Executors with another key neither see nor honour these
	// leases.
	Key []byte
	// TTL is how long a lease binds others without a renewal (default 15s).
	// A holder renews every TTL/3 while it fills.
	TTL time.Duration
	// Settle is how long Acquire waits between writing its record and
	// reading it back (default 150ms): long enough for concurrent writers'
	// records to land, so that all of them read the same winner.
	Settle time.Duration
	// PollMin and PollMax bound the follower's backoff between checks
	// (defaults 50ms and 1s).
	PollMin, PollMax time.Duration
	// Now is the clock (default time.Now). Executors' clocks must agree to
	// well within TTL.
	Now func() time.Time
}

// Leaser takes, renews and follows leases for one executor.
type Leaser struct {
	cfg    Config
	holder string
}

// New returns a Leaser with a fresh random holder identity.
func New(cfg Config) (*Leaser, error) {
	if cfg.Store == nil {
		return nil, errors.New("lease: no store")
	}
	if len(cfg.Key) < 32 {
		return nil, errors.New("lease: the signing key must be at least 32 bytes")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 15 * time.Second
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 150 * time.Millisecond
	}
	if cfg.PollMin <= 0 {
		cfg.PollMin = 50 * time.Millisecond
	}
	if cfg.PollMax < cfg.PollMin {
		cfg.PollMax = max(time.Second, cfg.PollMin)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("lease: holder identity: %w", err)
	}
	return &Leaser{cfg: cfg, holder: hex.EncodeToString(id[:])}, nil
}

// Holder is this Leaser's identity in records.
func (l *Leaser) Holder() string { return l.holder }

// Read returns the current record of k, or ok=false when there is none
// that is valid (absent, unsigned, forged, for another key, malformed).
// Store errors other than a miss are returned.
func (l *Leaser) Read(ctx context.Context, k blob.RefKey) (rec Record, ok bool, err error) {
	ref, err := l.cfg.Store.GetRef(ctx, k)
	if errors.Is(err, blob.ErrNotFound) {
		return Record{}, false, nil
	}
	if err != nil {
		return Record{}, false, err
	}
	base, signed := refsig.Split(ref.MediaType, func(base string) []byte { return l.sig(k, base, ref.Digest) })
	if !signed || base != MediaType || ref.Size <= 0 || ref.Size > maxRecord {
		return Record{}, false, nil
	}
	rc, _, err := l.cfg.Store.Open(ctx, ref.Digest)
	if errors.Is(err, blob.ErrNotFound) {
		return Record{}, false, nil
	}
	if err != nil {
		return Record{}, false, err
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := blob.Copy(&buf, rc, ref.Digest, ref.Size); err != nil {
		if errors.Is(err, blob.ErrMismatch) {
			return Record{}, false, nil
		}
		return Record{}, false, err
	}
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil || rec.Version != version || rec.Key != k.String() || rec.Holder == "" {
		return Record{}, false, nil
	}
	return rec, true, nil
}

func (l *Leaser) sig(k blob.RefKey, base string, d blob.Digest) []byte {
	return refsig.MAC(l.cfg.Key, "lease", k.String(), base, string(d))
}

// write stores rec as k's lease.
func (l *Leaser) write(ctx context.Context, k blob.RefKey, rec Record) error {
	body, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	d := blob.FromBytes(body)
	if err := l.cfg.Store.Put(ctx, d, int64(len(body)), bytes.NewReader(body)); err != nil {
		return fmt.Errorf("lease %s: put record: %w", k, err)
	}
	// The ref outlives the record by a margin: the record's own expiry is
	// what binds; the ref's lets the store forget stale leases.
	ref := blob.Ref{Digest: d, Size: int64(len(body)), MediaType: refsig.Attach(MediaType, l.sig(k, MediaType, d)), Expires: rec.Expires.Add(refMargin)}
	if err := l.cfg.Store.PutRef(ctx, k, ref); err != nil {
		return fmt.Errorf("lease %s: put ref: %w", k, err)
	}
	return nil
}

// Lease is a lease this executor holds.
type Lease struct {
	l   *Leaser
	k   blob.RefKey
	rec Record
}

// Record is the record as written.
func (ls *Lease) Record() Record { return ls.rec }

// Acquire tries to take k's lease for filling a blob of size bytes. It
// returns the Lease when this executor leads; otherwise nil and the record
// of the holder to follow. takeover reports that the lease taken had a
// live-looking predecessor that had failed or expired.
func (l *Leaser) Acquire(ctx context.Context, k blob.RefKey, size int64) (ls *Lease, cur Record, takeover bool, err error) {
	cur, ok, err := l.Read(ctx, k)
	if err != nil {
		return nil, Record{}, false, err
	}
	now := l.cfg.Now()
	if ok && cur.Live(now) && cur.Holder != l.holder {
		return nil, cur, false, nil
	}
	mine := Record{Version: version, Key: k.String(), Holder: l.holder, State: StateFilling, Size: size,
		Acquired: now.UTC(), Expires: now.Add(l.cfg.TTL).UTC(), Generation: 1}
	if ok {
		mine.Generation = cur.Generation + 1
		takeover = cur.Holder != l.holder
	}
	if err := l.write(ctx, k, mine); err != nil {
		return nil, Record{}, false, err
	}
	if err := sleep(ctx, l.cfg.Settle); err != nil {
		return nil, Record{}, false, err
	}
	got, ok, err := l.Read(ctx, k)
	if err != nil {
		return nil, Record{}, false, err
	}
	if !ok {
		// Our record vanished (an evicting store): lead, the worst case is
		// one more fill.
		return &Lease{l: l, k: k, rec: mine}, mine, takeover, nil
	}
	if got.Holder != l.holder || got.Generation != mine.Generation {
		return nil, got, false, nil
	}
	return &Lease{l: l, k: k, rec: mine}, mine, takeover, nil
}

// Renew extends the lease by TTL. It returns an error wrapping ErrLost when
// another holder has taken the lease meanwhile (fenced by generation).
func (ls *Lease) Renew(ctx context.Context) error {
	cur, ok, err := ls.l.Read(ctx, ls.k)
	if err != nil {
		return err
	}
	if ok && (cur.Holder != ls.rec.Holder || cur.Generation != ls.rec.Generation) {
		return fmt.Errorf("lease %s: %w to %s (generation %d)", ls.k, ErrLost, cur.Holder, cur.Generation)
	}
	rec := ls.rec
	rec.Expires = ls.l.cfg.Now().Add(ls.l.cfg.TTL).UTC()
	if err := ls.l.write(ctx, ls.k, rec); err != nil {
		return err
	}
	ls.rec = rec
	return nil
}

// ErrLost: another holder took the lease over.
var ErrLost = errors.New("lost the lease")

// Outcome of a fill, for Release.
type Result int

const (
	// Filled: the blob is in the shared store now.
	Filled Result = iota
	// Failed: the fill failed; a follower takes over at once.
	Failed
	// Unshared: the fill succeeded but the blob did not reach the shared
	// store; followers stop waiting and fill by themselves.
	Unshared
)

// Release ends the lease. After a fill that reached the shared store the
// ref is deleted; after a failed one the record is rewritten as failed, so
// that a follower takes over at once instead of waiting for the expiry;
// after one that did not reach the shared store, as unshared, so that
// every follower fills by itself at once (one at a time would make the
// fleet pull in a chain). A lease lost to another holder is left alone.
func (ls *Lease) Release(ctx context.Context, res Result) error {
	cur, ok, err := ls.l.Read(ctx, ls.k)
	if err != nil {
		return err
	}
	if ok && (cur.Holder != ls.rec.Holder || cur.Generation != ls.rec.Generation) {
		return nil
	}
	rec := ls.rec
	switch res {
	case Filled:
		if err := ls.l.cfg.Store.DeleteRef(ctx, ls.k); err != nil && !errors.Is(err, blob.ErrNotFound) {
			return err
		}
		return nil
	case Unshared:
		rec.State = StateUnshared
	default:
		rec.State = StateFailed
	}
	return ls.l.write(ctx, ls.k, rec)
}

// Hold renews ls every TTL/3 until ctx is done or the lease is lost; it
// returns the error that ended it (ctx.Err() in the normal case). Run it
// in a goroutine next to the fill.
func (ls *Lease) Hold(ctx context.Context) error {
	t := time.NewTicker(ls.l.cfg.TTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if err := ls.Renew(ctx); err != nil {
				return err
			}
		}
	}
}

// Outcome says how a Wait ended.
type Outcome int

const (
	// Ready: done reported true; the blob is there.
	Ready Outcome = iota
	// Lead: the lease was free, expired or failed, and this executor took
	// it; the caller fills and releases Lease.
	Lead
)

// Wait takes or follows k's lease: it polls done with backoff until it reports
// true (Ready), or takes the lease when it is free, has failed or has
// expired (Lead, with the Lease; takeover reports a predecessor), or
// returns ErrDeadline at deadline or when the holder reports that it could
// not share the blob (the caller fills by itself, without a lease). Errors of done end the wait; store errors while reading the
// lease end it with ErrDeadline's meaning too (wrapped), since a follower
// must never depend on a store that fails.
func (l *Leaser) Wait(ctx context.Context, k blob.RefKey, size int64, deadline time.Time, done func(context.Context) (bool, error)) (out Outcome, ls *Lease, takeover bool, err error) {
	pause := l.cfg.PollMin
	for {
		ok, err := done(ctx)
		if err != nil {
			return 0, nil, false, err
		}
		if ok {
			return Ready, nil, false, nil
		}
		if !l.cfg.Now().Before(deadline) {
			return 0, nil, false, ErrDeadline
		}
		cur, found, err := l.Read(ctx, k)
		if err != nil {
			return 0, nil, false, fmt.Errorf("%w (reading the lease: %v)", ErrDeadline, err)
		}
		if found && cur.State == StateUnshared && l.cfg.Now().Before(cur.Expires) {
			return 0, nil, false, fmt.Errorf("%w (the holder could not share the blob)", ErrDeadline)
		}
		if !found || !cur.Live(l.cfg.Now()) {
			// A holder that just finished deletes its lease after the blob
			// arrived: look again before taking the lease, or a follower
			// that looked just before the arrival would fill again.
			if ok, err := done(ctx); err != nil || ok {
				if err != nil {
					return 0, nil, false, err
				}
				return Ready, nil, false, nil
			}
			ls, _, takeover, err := l.Acquire(ctx, k, size)
			if err != nil {
				return 0, nil, false, fmt.Errorf("%w (taking the lease: %v)", ErrDeadline, err)
			}
			if ls != nil {
				return Lead, ls, takeover, nil
			}
		}
		wait := min(pause, deadline.Sub(l.cfg.Now()))
		if err := sleep(ctx, max(wait, time.Millisecond)); err != nil {
			return 0, nil, false, err
		}
		pause = min(pause*2, l.cfg.PollMax)
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
