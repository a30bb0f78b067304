package fetcher

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/lease"
)

// Leases configures fleet-wide pull collapse: executors that share a tier
// (the REAPI tier) agree, through short signed leases kept in it, on which
// one of them pulls a blob from the registry; the others wait for the blob
// to arrive in the shared tier and read it from there. See docs/reapi.md
// ("Fill leases") for the record format, timings and failure modes.
//
// Leases change who pulls, never who may read: a follower reads the blob
// another executor uploaded only once its own repository is a proven
// member for it (the leader of the same repository records that
// membership in the shared tier at the verified end of its pull), and
// callers that may not use the shared tier (anonymous ones) neither take
// nor follow leases.
type Leases struct {
	// Store is the shared tier the leases live in (the stack's Shared
	// entry). nil turns leases off.
	Store blob.Tier
	// SigningKey signs and verifies leases: the fleet's secret, derived from the
	// identity key every executor of the fleet shares (at least 32 bytes).
	SigningKey []byte
	// TTL is how long a lease binds the others without a renewal (default
	// 15s); its holder renews it every TTL/3 while the pull makes progress.
	TTL time.Duration
	// Settle is how long a candidate waits between writing its lease and
	// reading back who won (default 100ms).
	Settle time.Duration
	// MaxWait bounds a follower's wait for one blob before it pulls it
	// itself: MaxWait plus one second per 8 MiB of the blob (default 2
	// minutes).
	MaxWait time.Duration
}

// Lease metric events (strata_fetch_leases_total{event}).
const (
	leaseTaken    = "taken"    // this executor leads a pull
	leaseFollowed = "followed" // waited for another executor's pull, and got the blob
	leaseTakeover = "takeover" // took over an expired or failed lease
	leaseDeadline = "deadline" // waited until its own deadline and pulled itself
	leaseError    = "unusable" // the shared tier failed the lease: pulled without one
	leaseLost     = "lost"     // a holder found its lease taken over while pulling
	leaseReleased = "released" // a leader released its lease after the pull
)

const defaultLeaseMaxWait = 2 * time.Minute

// newLeaser returns the leaser for cfg, or nil when leases are off.
func newLeaser(cfg Leases, now func() time.Time) (*lease.Leaser, error) {
	if cfg.Store == nil {
		return nil, nil
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 100 * time.Millisecond
	}
	return lease.New(lease.Config{Store: cfg.Store, Key: cfg.SigningKey, TTL: cfg.TTL, Settle: cfg.Settle, Now: now})
}

// fleetTurn decides, for a blob this executor is about to pull for a
// repository that is not a member, whether it pulls (a non-nil lease to
// hold and release, or nil when it pulls without one: no lease could be
// had in time, or the shared tier failed) or another executor's pull made
// the repository a member meanwhile (ready). Errors are ctx's only.
func (b *blobAccess) fleetTurn(ctx context.Context, d blob.Digest, size int64) (ls *lease.Lease, ready bool, err error) {
	f := b.f
	k := blob.RefKey{Namespace: lease.Namespace, Name: memberKey(b.repo, d).Name}
	wait := f.cfg.Leases.MaxWait
	if wait <= 0 {
		wait = defaultLeaseMaxWait
	}
	deadline := f.now().Add(wait + time.Duration(size>>23)*time.Second)
	out, ls, takeover, err := f.leaser.Wait(ctx, k, size, deadline, func(ctx context.Context) (bool, error) {
		return b.member(ctx, d), ctx.Err()
	})
	switch {
	case ctx.Err() != nil:
		return nil, false, ctx.Err()
	case errors.Is(err, lease.ErrDeadline):
		f.m.leases.WithLabelValues(leaseDeadline).Inc()
		return nil, false, nil
	case err != nil:
		f.m.leases.WithLabelValues(leaseError).Inc()
		return nil, false, nil
	case out == lease.Ready:
		f.m.leases.WithLabelValues(leaseFollowed).Inc()
		return nil, true, nil
	}
	// Lead: the lease was free, or expired or failed (a takeover).
	f.m.leases.WithLabelValues(leaseTaken).Inc()
	if takeover {
		f.m.leases.WithLabelValues(leaseTakeover).Inc()
	}
	return ls, false, nil
}

// holdLease renews ls while the pull of d for repo runs and returns the
// function that ends it: it stops the renewals and releases the lease as
// filled (the membership is in the shared tier now, so the blob is too),
// as unshared (pulled, but the shared tier did not take it: followers pull
// themselves at once) or as failed (a follower takes over at once).
func (f *Fetcher) holdLease(ctx context.Context, ls *lease.Lease, member blob.RefKey) (end func(filled bool)) {
	hctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	held := make(chan struct{})
	go func() {
		defer close(held)
		if err := ls.Hold(hctx); errors.Is(err, lease.ErrLost) {
			f.m.leases.WithLabelValues(leaseLost).Inc()
		}
	}()
	return func(filled bool) {
		stop()
		<-held
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		res := lease.Failed
		if filled {
			res = lease.Unshared
			if _, err := f.cfg.Leases.Store.GetRef(rctx, member); err == nil {
				res = lease.Filled
			}
		}
		if ls.Release(rctx, res) == nil {
			f.m.leases.WithLabelValues(leaseReleased).Inc()
		}
	}
}

func newLeaseMetric() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricLeases,
		Help: "Fleet-wide fill leases in the shared tier, by event: taken, followed (got the blob another executor pulled), takeover, deadline (pulled itself after waiting), unusable (the shared tier failed the lease), lost, released.",
	}, []string{"event"})
}
