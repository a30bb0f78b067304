package fetcher

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/flight"
	"github.com/strata-oci/strata/internal/lease"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/tiers"
)

// maxFillJoins bounds how often a caller waits for another caller's fill
// of a blob before it fills on its own.
const maxFillJoins = 3

// blobAccess decides, per blob, where one caller's image may read it from.
//
// Cached bytes are served to a caller only for blobs its repository is a
// proven member of: the registry has served those bytes for that
// repository (a membership ref). Any other blob is read from the caller's
// own registry (tiers.Stack.Fill), never from a cached copy another
// registry or repository put there, and the download proves the membership
// for next time. Without this, a registry an attacker controls could list a
// victim's digests in a manifest and be handed the victim's cached bytes.
//
// It must only be asked for digests the origin vouched for: the target the
// origin resolved, or digests listed in documents whose own digest it
// vouched for. Membership is recorded for what it reads from the registry,
// whose bytes may have come from a mirror: what makes them the
// repository's is that the origin vouched for the digest.
type blobAccess struct {
	f    *Fetcher
	st   *tiers.Stack
	repo registry.Repository
	auth authn.Authenticator
	// leases: pulls of non-member blobs go through fleet leases
	// (Config.Leases; see fleetTurn).
	leases bool
}

// source is the caller's registry, for d of size bytes (a manifest or
// index when manifestType is set).
func (b *blobAccess) source(d blob.Digest, size int64, manifestType string) registrySource {
	return registrySource{client: b.f.cfg.Registry, repo: b.repo, auth: b.auth, d: d, size: size, manifestType: manifestType}
}

// member reports whether the repository is a proven member for d.
func (b *blobAccess) member(ctx context.Context, d blob.Digest) bool {
	_, err := b.f.getRef(ctx, b.st, memberKey(b.repo, d))
	return err == nil
}

// open returns a reader over d (size bytes; a manifest or index when
// manifestType is set): read through the tiers, the registry last, when
// the repository is a member for d; else from the registry only, while
// the stack writes it into the tiers, which proves the membership at the
// reader's verified end. Info.Tier names the tier that served the bytes,
// or SourceRegistry.
func (b *blobAccess) open(ctx context.Context, d blob.Digest, size int64, manifestType string) (io.ReadCloser, blob.Info, error) {
	for tries := 0; ; tries++ {
		if b.member(ctx, d) {
			return b.st.OpenOrFill(ctx, b.repo.String(), d, size, b.source(d, size, manifestType))
		}
		if tries > maxFillJoins {
			// The membership another fill proved keeps vanishing (a
			// flapping shared tier): read the registry, without a
			// flight or a lease, rather than go round forever.
			return b.fillFrom(ctx, nil, d, size, manifestType, nil)
		}
		rc, info, err := b.fill(ctx, d, size, manifestType)
		if rc != nil || err != nil {
			return rc, info, err
		}
		// Another caller's fill proved the membership meanwhile.
	}
}

// readSmall reads a small blob (a manifest, index or config) whole and
// verified through open; it returns the name of the tier that served it.
func (b *blobAccess) readSmall(ctx context.Context, d blob.Digest, size int64, manifestType string) ([]byte, string, error) {
	return readSmall(d, size, func() (io.ReadCloser, blob.Info, error) { return b.open(ctx, d, size, manifestType) })
}

// fill makes the repository a member for d the groupcache way: fills of
// one repository and digest collapse into one flight, which re-checks the
// membership inside (a caller that decided to fill just as another fill
// proved it does not download again). The flight's leader gets the reader
// of tiers.Stack.Fill, streaming d from the caller's registry into the
// tiers; its verified end records the membership, then ends the flight.
// A caller that waited for a flight (or found the membership inside one)
// gets no reader and no error once the repository is a member: it reads
// the tiers. With fleet leases (Config.Leases), the leader first takes its
// turn in the fleet (fleetTurn): it may find that another executor's pull
// made the repository a member meanwhile. A flight that failed, or whose leader gave up, is not the
// waiter's answer (the leader's credentials, context or registry were its
// own): the waiter looks again, and after maxFillJoins fills on its own.
func (b *blobAccess) fill(ctx context.Context, d blob.Digest, size int64, manifestType string) (io.ReadCloser, blob.Info, error) {
	key := memberKey(b.repo, d).Name
	for joins := 0; joins < maxFillJoins; joins++ {
		c, leader := b.f.fills.Lead(key)
		if leader && !b.leases {
			if b.member(ctx, d) {
				c.End(struct{}{}, nil)
				return nil, blob.Info{}, nil
			}
			return b.fillFrom(ctx, c, d, size, manifestType, nil)
		}
		if leader {
			// Fleet-wide: pull only if this executor leads (or nobody
			// did in time); else another executor's pull (or a local
			// one: fleetTurn's first look is this flight's re-check of
			// the membership) made the repository a member and the
			// caller reads the tiers.
			ls, ready, err := b.fleetTurn(ctx, d, size)
			if err != nil || ready {
				c.End(struct{}{}, err)
				if err != nil {
					return nil, blob.Info{}, fmt.Errorf("%s: %w", d, err)
				}
				return nil, blob.Info{}, nil
			}
			return b.fillFrom(ctx, c, d, size, manifestType, ls)
		}
		_, err := c.Wait(ctx)
		if cerr := ctx.Err(); cerr != nil {
			return nil, blob.Info{}, fmt.Errorf("%s: %w", d, cerr)
		}
		if err == nil && b.member(ctx, d) {
			return nil, blob.Info{}, nil
		}
	}
	return b.fillFrom(ctx, nil, d, size, manifestType, nil)
}

// fillFrom streams d from the caller's registry into the tiers and returns
// the reader that proves membership at its verified end and then ends c
// (nil: no flight). A fleet lease ls, if any, is held while the pull
// runs and released with its outcome.
func (b *blobAccess) fillFrom(ctx context.Context, c *flight.Call[struct{}], d blob.Digest, size int64, manifestType string, ls *lease.Lease) (io.ReadCloser, blob.Info, error) {
	endLease := func(bool) {}
	if ls != nil {
		endLease = b.f.holdLease(ctx, ls, memberKey(b.repo, d))
	}
	rc, info, err := b.st.Fill(ctx, b.repo.String(), d, size, b.source(d, size, manifestType))
	if err != nil {
		endLease(false)
		if c != nil {
			c.End(struct{}{}, err)
		}
		return nil, blob.Info{}, err
	}
	return &provingReader{rc: rc, proved: func() {
		// The stack's reader reports io.EOF only after exactly d was
		// read from the registry, verified, and the tiers took it.
		b.f.putRef(context.WithoutCancel(ctx), b.st, memberKey(b.repo, d), blob.Ref{Digest: d, Size: size, MediaType: manifestType})
	}, end: func(err error) {
		// The membership is recorded (proved runs first): followers
		// that see the lease go find the blob.
		endLease(err == nil)
		if c != nil {
			c.End(struct{}{}, err)
		}
	}}, info, nil
}

// provingReader is the leader's reader of a membership fill: at its
// verified end it records the membership (proved), and then, or when it is
// closed or fails before the end, it ends the fill's flight.
type provingReader struct {
	rc     io.ReadCloser
	proved func()
	end    func(error)
	once   sync.Once
}

func (r *provingReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	switch {
	case err == io.EOF:
		r.once.Do(func() {
			r.proved()
			r.end(nil)
		})
	case err != nil:
		r.once.Do(func() { r.end(fmt.Errorf("%w: %w", flight.ErrLeaderGone, err)) })
	}
	return n, err
}

// VerifiedBlob implements blob.VerifiedReader: the stack's reader is one.
func (r *provingReader) VerifiedBlob() (blob.Digest, int64) { return blob.VerifiedBlobOf(r.rc) }

func (r *provingReader) Close() error {
	r.once.Do(func() { r.end(fmt.Errorf("%w: closed before the end", flight.ErrLeaderGone)) })
	return r.rc.Close()
}
