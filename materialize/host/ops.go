package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/prometheus/common/expfmt"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/tiers"
)

// maxManifestRead bounds a manifest read to learn media types.
const maxManifestRead = 4 << 20

// selectTiers returns the tiers an operation applies to: the named one, or
// every tier (local only when localOnly).
func (h *Host) selectTiers(name string, localOnly bool) ([]tiers.Entry, error) {
	if name != "" {
		e, err := h.tierByName(name)
		if err != nil {
			return nil, err
		}
		return []tiers.Entry{e}, nil
	}
	var out []tiers.Entry
	for _, e := range h.stack.Tiers() {
		if localOnly && e.Shared {
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// Blobs implements Admin.
func (h *Host) Blobs(ctx context.Context, tier string) ([]BlobRecord, error) {
	sel, err := h.selectTiers(tier, false)
	if err != nil {
		return nil, err
	}
	types := h.mediaTypes(ctx)
	var out []BlobRecord
	for _, e := range sel {
		err := e.Tier.Walk(ctx, func(i blob.Info) error {
			out = append(out, BlobRecord{Tier: e.Tier.Name(), Digest: i.Digest.String(), Size: i.Size, LastAccess: i.LastAccess.UTC(), MediaType: types[i.Digest]})
			return nil
		})
		if err != nil && !(errors.Is(err, blob.ErrUnsupported) && tier == "") {
			return nil, fmt.Errorf("list %s: %w", e.Tier.Name(), err)
		}
	}
	return out, nil
}

// mediaTypes maps digests to media types from the refs and the manifests
// the local tiers hold. It is best effort: what it cannot read stays unknown.
func (h *Host) mediaTypes(ctx context.Context) map[blob.Digest]string {
	types := map[blob.Digest]string{}
	local := h.stack.Local()
	_ = local.WalkRefs(ctx, "", func(_ blob.RefKey, r blob.Ref) error {
		if mt := fetcher.RefMediaType(r.MediaType); mt != "" {
			types[r.Digest] = mt
		}
		return nil
	})
	for d, mt := range types {
		if !manifest.IsManifest(mediaType(mt)) {
			continue
		}
		rc, info, err := openNoFill(ctx, local, d)
		if err != nil {
			continue
		}
		var data []byte
		if info.Size <= maxManifestRead {
			data, err = io.ReadAll(blob.NewVerifier(rc, d, info.Size, nil))
		}
		rc.Close()
		if err != nil || data == nil {
			continue
		}
		m, err := manifest.ParseManifest(mt, data)
		if err != nil {
			continue
		}
		types[m.Config.Digest] = string(m.Config.MediaType)
		for _, l := range m.Layers {
			types[l.Digest] = string(l.MediaType)
		}
	}
	return types
}

// Refs implements Admin.
func (h *Host) Refs(ctx context.Context, tier, namespace string) ([]RefRecord, error) {
	sel, err := h.selectTiers(tier, false)
	if err != nil {
		return nil, err
	}
	var out []RefRecord
	for _, e := range sel {
		err := e.Tier.WalkRefs(ctx, namespace, func(k blob.RefKey, r blob.Ref) error {
			out = append(out, RefRecord{Tier: e.Tier.Name(), Namespace: k.Namespace, Scope: k.Scope, Name: k.Name,
				Digest: r.Digest.String(), Size: r.Size, MediaType: fetcher.RefMediaType(r.MediaType), Expires: r.Expires.UTC()})
			return nil
		})
		if err != nil && !(errors.Is(err, blob.ErrUnsupported) && tier == "") {
			return nil, fmt.Errorf("refs %s: %w", e.Tier.Name(), err)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.Scope < b.Scope
	})
	return out, nil
}

// Stat implements Admin.
func (h *Host) Stat(ctx context.Context, d blob.Digest) ([]BlobRecord, error) {
	if err := blob.ValidateDigest(d); err != nil {
		return nil, err
	}
	var out []BlobRecord
	var unavailable []error
	types := h.mediaTypes(ctx)
	for _, e := range h.stack.Tiers() {
		i, err := e.Tier.Stat(ctx, d)
		switch {
		case err == nil:
			out = append(out, BlobRecord{Tier: e.Tier.Name(), Digest: d.String(), Size: i.Size, LastAccess: i.LastAccess.UTC(), MediaType: types[d]})
		case errors.Is(err, blob.ErrNotFound):
		default:
			unavailable = append(unavailable, err)
		}
	}
	if len(out) == 0 {
		if len(unavailable) > 0 {
			return nil, fmt.Errorf("%s: %w (and %w)", d, blob.ErrNotFound, errors.Join(unavailable...))
		}
		return nil, fmt.Errorf("%s: %w in any tier (%s)", d, blob.ErrNotFound, h.tierNames())
	}
	return out, nil
}

// Cat implements Admin.
func (h *Host) Cat(ctx context.Context, d blob.Digest, w io.Writer) (int64, error) {
	if err := blob.ValidateDigest(d); err != nil {
		return 0, err
	}
	rc, info, err := h.stack.Open(ctx, d)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	return blob.Copy(w, rc, d, info.Size)
}

// Usage implements Admin.
func (h *Host) Usage(ctx context.Context) ([]UsageRecord, error) {
	tu, err := h.stack.TierUsage(ctx)
	if err != nil {
		return nil, err
	}
	var out []UsageRecord
	for _, t := range tu {
		r := UsageRecord{Tier: t.Name, Shared: t.Shared, Blobs: t.Usage.Blobs, Bytes: t.Usage.Bytes, Refs: t.Usage.Refs, Budget: t.Usage.Budget}
		if t.Err != nil {
			r.Error = t.Err.Error()
		}
		out = append(out, r)
	}
	ou := h.overlay.Usage()
	out = append(out, UsageRecord{Tier: "overlay", Blobs: int64(ou.Layers), Bytes: ou.Bytes, Budget: int64(h.cfg.Overlay.Budget)})
	return out, nil
}

// Evict implements Admin.
func (h *Host) Evict(ctx context.Context, req EvictRequest) ([]EvictRecord, error) {
	n := 0
	for _, set := range []bool{req.Digest != "", req.Image != "", req.OlderThan > 0, req.ToSizeSet || req.ToSize > 0} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, fmt.Errorf("%w: evict needs exactly one of a digest, an image, older-than or to-size", ErrInvalidRequest)
	}
	switch {
	case req.Digest != "":
		return h.evictDigest(ctx, req)
	case req.Image != "":
		if req.Tier != "" {
			return nil, fmt.Errorf("%w: evicting an image applies to every tier; drop --tier", ErrInvalidRequest)
		}
		return h.evictImage(ctx, req.Image)
	}
	sel, err := h.selectTiers(req.Tier, true)
	if err != nil {
		return nil, err
	}
	var out []EvictRecord
	for _, e := range sel {
		var rec EvictRecord
		var err error
		if req.OlderThan > 0 {
			rec, err = h.evictOlder(ctx, e, time.Now().Add(-time.Duration(req.OlderThan)))
		} else {
			rec, err = h.evictTo(ctx, e, int64(req.ToSize))
		}
		if err != nil {
			return out, err
		}
		out = append(out, rec)
	}
	return out, nil
}

func (h *Host) evictDigest(ctx context.Context, req EvictRequest) ([]EvictRecord, error) {
	d, err := blob.ParseDigest(req.Digest)
	if err != nil {
		return nil, err
	}
	sel, err := h.selectTiers(req.Tier, false)
	if err != nil {
		return nil, err
	}
	var out []EvictRecord
	var errs []error
	// Bottom-up, so a concurrent fill cannot copy it back from below.
	for i := len(sel) - 1; i >= 0; i-- {
		t := sel[i].Tier
		info, err := t.Stat(ctx, d)
		if err != nil {
			if !errors.Is(err, blob.ErrNotFound) && !errors.Is(err, blob.ErrUnsupported) {
				errs = append(errs, err)
			}
			continue
		}
		if err := t.Delete(ctx, d); err != nil {
			if errors.Is(err, blob.ErrUnsupported) && req.Tier == "" {
				continue // a remote tier evicts by its own policy
			}
			if !errors.Is(err, blob.ErrNotFound) {
				errs = append(errs, err)
			}
			continue
		}
		out = append([]EvictRecord{{Tier: t.Name(), Blobs: 1, Bytes: info.Size}}, out...)
	}
	if len(errs) > 0 {
		return out, errors.Join(errs...)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: %w in %s", d, blob.ErrNotFound, tierList(sel))
	}
	return out, nil
}

func tierList(sel []tiers.Entry) string {
	s := ""
	for i, e := range sel {
		if i > 0 {
			s += ", "
		}
		s += e.Tier.Name()
	}
	return s
}

func (h *Host) evictImage(ctx context.Context, ref string) ([]EvictRecord, error) {
	before, err := h.localUsage(ctx)
	if err != nil {
		return nil, err
	}
	if err := h.fetcher.InvalidateCache(ctx, ref); err != nil {
		return nil, err
	}
	after, err := h.localUsage(ctx)
	if err != nil {
		return nil, err
	}
	var out []EvictRecord
	for _, b := range before {
		a := after[b.Tier]
		out = append(out, EvictRecord{Tier: b.Tier, Blobs: int(b.Blobs - a.Blobs), Bytes: b.Bytes - a.Bytes})
	}
	return out, nil
}

func (h *Host) localUsage(ctx context.Context) (map[string]UsageRecord, error) {
	tu, err := h.stack.Local().TierUsage(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]UsageRecord{}
	for _, t := range tu {
		out[t.Name] = UsageRecord{Tier: t.Name, Blobs: t.Usage.Blobs, Bytes: t.Usage.Bytes}
	}
	return out, nil
}

// evictOlder removes blobs of one tier last accessed before cutoff.
func (h *Host) evictOlder(ctx context.Context, e tiers.Entry, cutoff time.Time) (EvictRecord, error) {
	name := e.Tier.Name()
	if name == TierDisk && h.disk != nil {
		n, freed, err := h.disk.EvictOlderThan(ctx, cutoff)
		return EvictRecord{Tier: name, Blobs: n, Bytes: freed}, err
	}
	infos, err := walkAll(ctx, e.Tier)
	if err != nil {
		return EvictRecord{Tier: name}, err
	}
	rec := EvictRecord{Tier: name}
	for _, i := range infos {
		if i.LastAccess.IsZero() || !i.LastAccess.Before(cutoff) {
			continue
		}
		if err := e.Tier.Delete(ctx, i.Digest); err != nil {
			if errors.Is(err, blob.ErrNotFound) {
				continue
			}
			return rec, err
		}
		rec.Blobs++
		rec.Bytes += i.Size
	}
	return rec, nil
}

// evictTo evicts one tier's least recently used blobs down to target bytes.
func (h *Host) evictTo(ctx context.Context, e tiers.Entry, target int64) (EvictRecord, error) {
	name := e.Tier.Name()
	if name == TierDisk && h.disk != nil {
		n, freed, err := h.disk.EvictTo(ctx, target)
		return EvictRecord{Tier: name, Blobs: n, Bytes: freed}, err
	}
	infos, err := walkAll(ctx, e.Tier)
	if err != nil {
		return EvictRecord{Tier: name}, err
	}
	var total int64
	for _, i := range infos {
		total += i.Size
	}
	sort.Slice(infos, func(a, b int) bool { return infos[a].LastAccess.Before(infos[b].LastAccess) })
	rec := EvictRecord{Tier: name}
	for _, i := range infos {
		if total <= target {
			break
		}
		if err := e.Tier.Delete(ctx, i.Digest); err != nil && !errors.Is(err, blob.ErrNotFound) {
			return rec, err
		}
		total -= i.Size
		rec.Blobs++
		rec.Bytes += i.Size
	}
	return rec, nil
}

func walkAll(ctx context.Context, t blob.Tier) ([]blob.Info, error) {
	var infos []blob.Info
	err := t.Walk(ctx, func(i blob.Info) error {
		infos = append(infos, i)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", t.Name(), err)
	}
	return infos, nil
}

// Verify implements Admin.
func (h *Host) Verify(ctx context.Context, req VerifyRequest) ([]VerifyRecord, error) {
	sel, err := h.selectTiers(req.Tier, true)
	if err != nil {
		return nil, err
	}
	var out []VerifyRecord
	for _, e := range sel {
		name := e.Tier.Name()
		if e.Shared {
			return nil, fmt.Errorf("verify %s: %w (a shared tier verifies on every read)", name, blob.ErrUnsupported)
		}
		if name == TierDisk && h.disk != nil {
			err := h.disk.Verify(ctx, req.Remove, func(i blob.Info, err error) {
				out = append(out, verifyRecord(name, i.Digest, i.Size, err, req.Remove))
			})
			if err != nil {
				return out, fmt.Errorf("verify %s: %w", name, err)
			}
			continue
		}
		infos, err := walkAll(ctx, e.Tier)
		if err != nil {
			return out, err
		}
		for _, i := range infos {
			err := verifyOne(ctx, e.Tier, i)
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			rec := verifyRecord(name, i.Digest, i.Size, err, false)
			if err != nil && req.Remove {
				rec.Removed = e.Tier.Delete(ctx, i.Digest) == nil
			}
			out = append(out, rec)
		}
	}
	return out, nil
}

func verifyOne(ctx context.Context, t blob.Tier, i blob.Info) error {
	rc, _, err := t.Open(ctx, i.Digest)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = blob.Copy(io.Discard, rc, i.Digest, i.Size)
	return err
}

func verifyRecord(tier string, d blob.Digest, size int64, err error, removed bool) VerifyRecord {
	rec := VerifyRecord{Tier: tier, Digest: d.String(), Size: size, Status: StatusOK}
	switch {
	case err == nil:
		return rec
	case errors.Is(err, blob.ErrMismatch):
		rec.Status = StatusCorrupt
	case errors.Is(err, blob.ErrNotFound):
		rec.Status = StatusMissing
	default:
		rec.Status = StatusError
	}
	rec.Error = err.Error()
	rec.Removed = removed && rec.Status != StatusError
	return rec
}

// GC implements Admin.
func (h *Host) GC(ctx context.Context) (GCResult, error) {
	var res GCResult
	n, err := h.disk.PurgeExpiredRefs(ctx)
	if err != nil {
		return res, fmt.Errorf("gc: expired refs: %w", err)
	}
	res.ExpiredRefs = n
	for _, e := range h.stack.Tiers() {
		if e.Shared {
			continue
		}
		type orphan struct{ k blob.RefKey }
		var orphans []orphan
		for _, ns := range []string{blob.NamespaceTag, fetcher.NamespaceMember, blob.NamespaceDerived} {
			err := e.Tier.WalkRefs(ctx, ns, func(k blob.RefKey, r blob.Ref) error {
				if _, err := h.stack.Stat(ctx, r.Digest); errors.Is(err, blob.ErrNotFound) {
					orphans = append(orphans, orphan{k})
				}
				return nil
			})
			if err != nil && !errors.Is(err, blob.ErrUnsupported) {
				return res, fmt.Errorf("gc: refs of %s: %w", e.Tier.Name(), err)
			}
		}
		for _, o := range orphans {
			if err := e.Tier.DeleteRef(ctx, o.k); err == nil {
				res.OrphanRefs++
			} else if !errors.Is(err, blob.ErrNotFound) {
				return res, fmt.Errorf("gc: %w", err)
			}
		}
	}
	before := h.overlay.Usage()
	if err := h.overlay.Cleanup(ctx); err != nil {
		return res, fmt.Errorf("gc: overlay layers: %w", err)
	}
	after := h.overlay.Usage()
	res.Layers = before.Layers - after.Layers
	res.LayerBytes = before.Bytes - after.Bytes
	res.LayersLeased = after.Leased
	// ext4 images whose derivation ref went (with the orphans above, or
	// evicted): both converters share one work directory.
	if res.Ext4Images, res.Ext4Bytes, err = h.ext4.Prune(ctx); err != nil {
		return res, fmt.Errorf("gc: ext4 images: %w", err)
	}
	return res, nil
}

// Metrics implements Admin.
func (h *Host) Metrics(ctx context.Context, w io.Writer) error {
	if h.gatherer == nil {
		return fmt.Errorf("metrics: %w: the host was opened without a prometheus.Gatherer", blob.ErrUnsupported)
	}
	mfs, err := h.gatherer.Gather()
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	return nil
}

func mediaType(s string) types.MediaType { return types.MediaType(s) }

// openNoFill opens d from the first tier of s holding it, without writing it
// into the tiers above (listing must not change what it lists).
func openNoFill(ctx context.Context, s *tiers.Stack, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	for _, e := range s.Tiers() {
		rc, info, err := e.Tier.Open(ctx, d)
		if err == nil {
			return rc, info, nil
		}
	}
	return nil, blob.Info{}, fmt.Errorf("%s: %w", d, blob.ErrNotFound)
}
