package fetcher

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/flight"
	"github.com/strata-oci/strata/internal/lease"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/registry/credential"
	"github.com/strata-oci/strata/tiers"
)

// maxDocumentSize caps manifests, indexes and configs read from any tier.
const maxDocumentSize = 10 << 20

// maxCollapsedRetries bounds how often a caller retries after the collapsed
// fetch it joined failed without a definite answer.
const maxCollapsedRetries = 2

// Fetcher fetches images through a tier stack. It is safe for concurrent
// use; create one per process and share it.
type Fetcher struct {
	cfg      Config
	now      func() time.Time
	platform manifest.Platform
	m        *metrics
	fetches  flight.Group[*Image]
	// fills collapses the fills that prove membership, per repository
	// and digest (see blobAccess.fill).
	fills  flight.Group[struct{}]
	refKey []byte // signs the refs that decide access (Config.SigningKey)
	// leaser takes and follows fleet-wide fill leases (Config.Leases);
	// nil when they are off.
	leaser *lease.Leaser
}

// New returns a Fetcher for cfg. Store and Registry are required.
func New(cfg Config) (*Fetcher, error) {
	if cfg.Store == nil || cfg.Registry == nil {
		return nil, errors.New("fetcher: Config.Store and Config.Registry are required")
	}
	if cfg.TagTTL < 0 || cfg.ProofTTL < 0 {
		return nil, errors.New("fetcher: negative TTL")
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, fmt.Errorf("fetcher: metrics: %w", err)
	}
	f := &Fetcher{cfg: cfg, now: cfg.Now, platform: cfg.Platform, m: m, refKey: cfg.SigningKey}
	if len(f.refKey) == 0 {
		f.refKey = make([]byte, 32)
		if _, err := rand.Read(f.refKey); err != nil {
			return nil, fmt.Errorf("fetcher: ref key: %w", err)
		}
	}
	f.fetches.OnJoin = m.collapsed.Inc
	if f.now == nil {
		f.now = time.Now
	}
	if f.cfg.Logger == nil {
		f.cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if f.leaser, err = newLeaser(cfg.Leases, f.now); err != nil {
		return nil, fmt.Errorf("fetcher: leases: %w", err)
	}
	if f.platform.OS == "" {
		f.platform = manifest.Default()
	}
	f.platform = f.platform.Normalize()
	return f, nil
}

// Platform returns the platform the fetcher selects from indexes.
func (f *Fetcher) Platform() manifest.Platform { return f.platform }

// FetchImage resolves ref, authorizes cred for its repository, and returns
// the image for the fetcher's platform with its manifest and config read.
// cred is the credential that came with the request (credential.Anonymous
// for none); the configured Resolver may supply another.
//
// Errors wrap registry.ErrInvalidReference, registry.ErrDenied (the
// registry refused the caller), registry.ErrNotFound,
// registry.ErrUnreachable (the registry could not be asked and the cache
// could not answer for this caller), manifest.ErrNoMatchingPlatform (listing
// the platforms available), or a *blob.MismatchError. They never contain a
// credential.
func (f *Fetcher) FetchImage(ctx context.Context, ref string, cred credential.Credential) (*Image, error) {
	start := f.now()
	img, err := f.fetchImage(ctx, ref, cred)
	src := SourceRegistry
	if img != nil && img.FromCache {
		src = "cache"
	}
	f.m.duration.WithLabelValues(outcome(err), src).Observe(f.now().Sub(start).Seconds())
	return img, err
}

func (f *Fetcher) fetchImage(ctx context.Context, ref string, cred credential.Credential) (*Image, error) {
	r, err := registry.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	cred, id, err := f.credential(ctx, r.Registry(), cred)
	if err != nil {
		return nil, err
	}
	key := r.String() + "|" + f.platform.String() + "|" + id
	for attempt := 0; ; attempt++ {
		img, joined, err := f.fetches.Do(ctx, key, func(ctx context.Context) (*Image, error) {
			return f.fetch(ctx, r, cred, id)
		})
		if err == nil || !joined || ctx.Err() != nil || definite(err) || attempt >= maxCollapsedRetries {
			return img, err
		}
		// The fetch this caller joined failed without a definite answer
		// (cancelled, corrupt bytes, a transient fault): try again.
	}
}

// definite reports whether err is an answer every caller of one collapsed
// fetch shares, rather than a failure of that one attempt.
func definite(err error) bool {
	return errors.Is(err, registry.ErrDenied) || errors.Is(err, blob.ErrNotFound) ||
		errors.Is(err, registry.ErrInvalidReference) || errors.Is(err, manifest.ErrNoMatchingPlatform) ||
		errors.Is(err, manifest.ErrInvalid) || errors.Is(err, manifest.ErrUnknownMediaType) ||
		errors.Is(err, manifest.ErrSchema1) || errors.Is(err, manifest.ErrMediaTypeMismatch) ||
		errors.Is(err, manifest.ErrConfigMismatch) || errors.Is(err, blob.ErrInvalidDigest)
}

// credential resolves the request's credential and its identity.
func (f *Fetcher) credential(ctx context.Context, host string, cred credential.Credential) (credential.Credential, string, error) {
	if f.cfg.Credentials == nil {
		return cred, cred.Identity(f.cfg.IdentityKey), nil
	}
	c, err := f.cfg.Credentials.Resolve(ctx, host, cred)
	if err != nil {
		return credential.Credential{}, "", err
	}
	return c, f.cfg.Credentials.Identity(c), nil
}

// localOnly reports whether cred may not use the stack's shared tiers.
func (f *Fetcher) localOnly(cred credential.Credential) bool {
	return cred.IsAnonymous() && !f.cfg.AnonymousShared
}

// store is the stack view a caller may use.
func (f *Fetcher) store(cred credential.Credential) *tiers.Stack {
	if f.localOnly(cred) {
		return f.cfg.Store.Local()
	}
	return f.cfg.Store
}

// fetch does one FetchImage's work for an already-resolved credential.
func (f *Fetcher) fetch(ctx context.Context, r registry.Reference, cred credential.Credential, id string) (*Image, error) {
	st := f.store(cred)
	// Anonymous callers never take or follow fleet leases.
	ba := &blobAccess{f: f, st: st, repo: r.Repo(), auth: cred.Authenticator(), leases: f.leaser != nil && !cred.IsAnonymous()}

	acc, err := f.authorize(ctx, st, r, cred, id)
	if err != nil {
		return nil, err
	}
	img := &Image{Reference: r, Sources: map[blob.Digest]string{}, FromCache: acc.fromCache, localOnly: f.localOnly(cred)}
	doc, err := f.readDocument(ctx, ba, acc.target, img)
	if err != nil {
		return nil, err
	}
	f.record(ctx, st, r, id, acc)

	if doc.Index != nil {
		child, err := doc.Index.Select(f.platform)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r, err)
		}
		img.Index = doc.Index.Digest
		cdesc := manifest.Descriptor{Digest: child.Digest, Size: child.Size, MediaType: child.MediaType}
		doc, err = f.readDocument(ctx, ba, cdesc, img)
		if err != nil {
			return nil, err
		}
		if doc.Manifest == nil {
			return nil, fmt.Errorf("%s: index entry %s for %s: %w: nested index", r, child.Digest, f.platform, manifest.ErrInvalid)
		}
	}
	m := doc.Manifest
	img.digest, img.Manifest = m.Digest, m
	if m.IsArtifact() {
		return nil, fmt.Errorf("%s: %w: %s is an artifact (config %s), not a runnable image", r, manifest.ErrInvalid, m.Digest, m.Config.MediaType)
	}
	if m.Config.Size > maxDocumentSize {
		return nil, fmt.Errorf("%s: config %s of %d bytes: %w", r, m.Config.Digest, m.Config.Size, blob.ErrTooLarge)
	}
	data, tier, err := ba.readSmall(ctx, m.Config.Digest, m.Config.Size, "")
	if err != nil {
		return nil, fmt.Errorf("%s: config: %w", r, err)
	}
	img.Sources[m.Config.Digest] = tier
	if img.Config, err = manifest.ParseConfig(string(m.Config.MediaType), data); err != nil {
		return nil, fmt.Errorf("%s: %w", r, err)
	}
	if err := img.Config.CheckAgainst(m); err != nil {
		return nil, fmt.Errorf("%s: %w", r, err)
	}
	for _, l := range m.Layers {
		img.layers = append(img.layers, &Layer{desc: l, access: ba, m: f.m})
	}
	return img, nil
}

// access is the outcome of authorizing a caller for a reference.
type access struct {
	target    manifest.Descriptor // the manifest or index the reference names
	fromCache bool                // no network request was made
	proved    bool                // a new proof was made at the origin
	resolved  bool                // target came from the origin registry
}

// authorize decides whether the caller may have what r names and resolves
// it: from the cache when the caller holds a valid proof and the cache knows
// the target (a tag the origin answered within the tag TTL, or a digest the
// repository is a member for), else by asking the origin registry. A mirror
// never answers here: what a tag names and whether the repository holds a
// digest are the origin's to say, and the target is what membership is
// recorded for once its bytes (from wherever) verify.
func (f *Fetcher) authorize(ctx context.Context, st *tiers.Stack, r registry.Reference, cred credential.Credential, id string) (access, error) {
	repo := r.Repo()
	proven := f.proven(ctx, st, repo, id)
	var cached *blob.Ref
	if d := r.Digest(); d != "" {
		if ref, err := f.getRef(ctx, st, memberKey(repo, d)); err == nil {
			cached = &ref
		}
	} else if f.cfg.TagTTL > 0 {
		if ref, err := f.getRef(ctx, st, tagKey(r)); err == nil {
			cached = &ref
		}
	}
	if proven && cached != nil {
		f.m.proofs.WithLabelValues("hit").Inc()
		return access{target: descOf(*cached), fromCache: true}, nil
	}

	auth := cred.Authenticator()
	if !proven {
		// The proof: one manifest HEAD at the origin with the caller's
		// credentials (never a mirror), which also resolves a tag.
		desc, err := f.cfg.Registry.Head(ctx, r, auth)
		if err != nil {
			return access{}, f.refused(ctx, st, r, id, err)
		}
		f.m.proofs.WithLabelValues("made").Inc()
		return access{target: desc, proved: true, resolved: true}, nil
	}
	f.m.proofs.WithLabelValues("hit").Inc()
	// Proven, but the tag is not cached or the repository is not yet a
	// member for the digest: the origin vouches for the target (never a
	// mirror, which could name an image the origin does not have).
	desc, err := f.cfg.Registry.Head(ctx, r, auth)
	if err != nil {
		if errors.Is(err, registry.ErrUnreachable) {
			return access{}, fmt.Errorf("%s is not cached (or its tag expired) and the registry cannot be asked: %w", r, err)
		}
		return access{}, f.refused(ctx, st, r, id, err)
	}
	return access{target: desc, resolved: true}, nil
}

// refused handles a registry's negative answer: a denial revokes the
// caller's proof at once.
func (f *Fetcher) refused(ctx context.Context, st *tiers.Stack, r registry.Reference, id string, err error) error {
	if errors.Is(err, registry.ErrDenied) {
		f.m.proofs.WithLabelValues("denied").Inc()
		if derr := st.DeleteRef(ctx, proofKey(r.Repo(), id)); derr != nil && !errors.Is(derr, blob.ErrNotFound) {
			return fmt.Errorf("%w (and revoking the cached access proof failed: %v)", err, derr)
		}
	}
	if errors.Is(err, registry.ErrUnreachable) {
		return fmt.Errorf("no valid access proof for %s and the registry cannot be asked: %w", r.Repo(), err)
	}
	return err
}

// proven reports whether id, or everyone (a public repository), holds an
// unexpired access proof for repo.
func (f *Fetcher) proven(ctx context.Context, st *tiers.Stack, repo registry.Repository, id string) bool {
	if _, err := f.getRef(ctx, st, proofKey(repo, id)); err == nil {
		return true
	}
	if id == credential.AnonymousIdentity {
		return false
	}
	_, err := f.getRef(ctx, st, proofKey(repo, credential.AnonymousIdentity))
	return err == nil
}

// record writes what a fetch learned from the origin registry: the proof
// and the tag (membership is recorded as verified bytes arrive: see
// blobAccess.served). Failures to record are not the caller's failure: the
// next fetch asks the registry again.
func (f *Fetcher) record(ctx context.Context, st *tiers.Stack, r registry.Reference, id string, acc access) {
	now := f.now()
	t := acc.target
	ref := blob.Ref{Digest: t.Digest, Size: t.Size, MediaType: string(t.MediaType)}
	if acc.proved && f.cfg.ProofTTL > 0 {
		p := ref
		p.Expires = now.Add(f.cfg.ProofTTL)
		f.putRef(ctx, st, proofKey(r.Repo(), id), p)
	}
	if acc.resolved && r.Digest() == "" && f.cfg.TagTTL > 0 {
		tg := ref
		tg.Expires = now.Add(f.cfg.TagTTL)
		f.putRef(ctx, st, tagKey(r), tg)
	}
}

func (f *Fetcher) putRef(ctx context.Context, st *tiers.Stack, k blob.RefKey, r blob.Ref) {
	_ = st.PutRef(ctx, k, f.sign(k, r)) // best effort: see record
}

// readDocument reads a manifest or index d, which the origin vouched for
// (the target it resolved, or an entry of a document it vouched for),
// through ba (the tiers, or the registry's manifests endpoint) and parses
// it.
func (f *Fetcher) readDocument(ctx context.Context, ba *blobAccess, d manifest.Descriptor, img *Image) (*manifest.Document, error) {
	if d.Size > maxDocumentSize {
		return nil, fmt.Errorf("manifest %s of %d bytes: %w", d.Digest, d.Size, blob.ErrTooLarge)
	}
	data, tier, err := ba.readSmall(ctx, d.Digest, d.Size, string(d.MediaType))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", d.Digest, err)
	}
	img.Sources[d.Digest] = tier
	doc, err := manifest.Parse(string(d.MediaType), data)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", d.Digest, err)
	}
	return doc, nil
}

// readSmall reads a small blob d, opened by open, whole and verifies it,
// whichever tier served it, and returns the tier's name. It reads at most
// maxDocumentSize bytes, whatever size says (a size < 0, unknown,
// included), and refuses a larger size before opening.
func readSmall(d blob.Digest, size int64, open func() (io.ReadCloser, blob.Info, error)) ([]byte, string, error) {
	if size > maxDocumentSize {
		return nil, "", fmt.Errorf("%s of %d bytes: %w (cap %d)", d, size, blob.ErrTooLarge, maxDocumentSize)
	}
	rc, info, err := open()
	if err != nil {
		return nil, "", err
	}
	data, err := readWhole(rc, d, size)
	if err != nil {
		return nil, "", err
	}
	return data, info.Tier, nil
}

// readWhole reads rc, a small blob d of size bytes, whole and verified, and
// closes it. It reads at most maxDocumentSize bytes.
func readWhole(rc io.ReadCloser, d blob.Digest, size int64) ([]byte, error) {
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(blob.NewVerifier(rc, d, size, nil), maxDocumentSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxDocumentSize {
		return nil, fmt.Errorf("%s: %w: more than %d bytes", d, blob.ErrTooLarge, maxDocumentSize)
	}
	return data, nil
}

// getRef reads a ref, checks its signature (see Config.SigningKey) and applies
// the fetcher's clock to its expiry (tiers apply their own; the fetcher's
// may be injected).
func (f *Fetcher) getRef(ctx context.Context, st blob.Tier, k blob.RefKey) (blob.Ref, error) {
	r, err := st.GetRef(ctx, k)
	if err != nil {
		return blob.Ref{}, err
	}
	if r, err = f.verify(k, r); err != nil {
		return blob.Ref{}, err
	}
	if r.Expired(f.now()) {
		return blob.Ref{}, fmt.Errorf("ref %s: %w (expired)", k, blob.ErrNotFound)
	}
	return r, nil
}

func descOf(r blob.Ref) manifest.Descriptor {
	return manifest.Descriptor{Digest: r.Digest, Size: r.Size, MediaType: types.MediaType(r.MediaType)}
}

func tagKey(r registry.Reference) blob.RefKey { return blob.TagKey(r.Repo().String(), r.Tag()) }

func memberKey(repo registry.Repository, d blob.Digest) blob.RefKey {
	return blob.MemberKey(repo.String(), d)
}

func proofKey(repo registry.Repository, id string) blob.RefKey {
	return blob.ProofKey(repo.String(), id)
}
