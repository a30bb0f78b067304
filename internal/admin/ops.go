package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/prometheus/common/expfmt"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/materialize/overlay"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/tiers"
)

// Names of the pseudo-tiers of Usage and Evict records.
const (
	UsageOverlay = "overlay" // extracted overlay layers
	UsageExt4    = "ext4"    // ext4 images handed out (ext4-dir/images)
	UsageRoot    = "root"    // every byte under the roots
)

// maxManifestRead bounds a manifest read to learn media types.
const maxManifestRead = 4 << 20

// selectTiers returns the tiers an operation applies to: the named one, or
// every tier (local only when localOnly).
func (l *Local) selectTiers(name string, localOnly bool) ([]tiers.Entry, error) {
	if name != "" {
		e, err := l.tierByName(name)
		if err != nil {
			return nil, err
		}
		return []tiers.Entry{e}, nil
	}
	var out []tiers.Entry
	for _, e := range l.p.Stack.Tiers() {
		if localOnly && e.Shared {
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// Blobs implements Admin.
func (l *Local) Blobs(ctx context.Context, tier string) ([]BlobRecord, error) {
	sel, err := l.selectTiers(tier, false)
	if err != nil {
		return nil, err
	}
	types := l.mediaTypes(ctx)
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
func (l *Local) mediaTypes(ctx context.Context) map[blob.Digest]string {
	types := map[blob.Digest]string{}
	local := l.p.Stack.Local()
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
		for _, layer := range m.Layers {
			types[layer.Digest] = string(layer.MediaType)
		}
	}
	return types
}

// Refs implements Admin.
func (l *Local) Refs(ctx context.Context, tier, namespace string) ([]RefRecord, error) {
	sel, err := l.selectTiers(tier, false)
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
func (l *Local) Stat(ctx context.Context, d blob.Digest) ([]BlobRecord, error) {
	if err := blob.ValidateDigest(d); err != nil {
		return nil, err
	}
	var out []BlobRecord
	var unavailable []error
	types := l.mediaTypes(ctx)
	for _, e := range l.p.Stack.Tiers() {
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
		return nil, fmt.Errorf("%s: %w in any tier (%s)", d, blob.ErrNotFound, l.tierNames())
	}
	return out, nil
}

// Cat implements Admin.
func (l *Local) Cat(ctx context.Context, d blob.Digest, w io.Writer) (int64, error) {
	if err := blob.ValidateDigest(d); err != nil {
		return 0, err
	}
	rc, info, err := l.p.Stack.Open(ctx, d)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	return blob.Copy(w, rc, d, info.Size)
}

// Usage implements Admin.
func (l *Local) Usage(ctx context.Context) ([]UsageRecord, error) {
	tu, err := l.p.Stack.TierUsage(ctx)
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
	ou := l.p.Overlay.Usage()
	out = append(out, UsageRecord{Tier: UsageOverlay, Blobs: int64(ou.Layers), Bytes: ou.Bytes, Budget: int64(l.p.OverlayBudget)})
	er := UsageRecord{Tier: UsageExt4}
	if eu, err := l.p.Ext4.Usage(); err != nil {
		er.Error = err.Error()
	} else {
		er.Blobs, er.Bytes, er.Budget = int64(eu.Images), eu.Bytes, eu.Budget
	}
	out = append(out, er)
	rr := UsageRecord{Tier: UsageRoot}
	if rr.Bytes, err = treeBytes(ctx, l.p.Root, l.p.OverlayRoot, l.p.Ext4Dir); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		rr.Error = err.Error()
	}
	out = append(out, rr)
	return out, nil
}

// treeBytes adds up what "du -sb" counts under dirs: the apparent size of
// every file, directory and symlink, a file with several hard links once,
// a directory nested in another of dirs once. The exception is the disk
// tier's index (Badger): its memtable (*.mem) and value-log (*.vlog) files
// are sparse files of a fixed size while the index is open, written out or
// cut to their content when it closes, so for them the allocated size
// counts when it is smaller (what du -sb finds after the close). Entries
// that vanish during the walk are skipped.
func treeBytes(ctx context.Context, dirs ...string) (int64, error) {
	var roots []string
	for _, d := range dirs {
		if d == "" {
			continue
		}
		nested := false
		for _, o := range dirs {
			if o != "" && o != d && strings.HasPrefix(d, o+string(filepath.Separator)) {
				nested = true
			}
		}
		if !nested && !slicesContains(roots, d) {
			roots = append(roots, d)
		}
	}
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	var total int64
	for _, root := range roots {
		index := filepath.Join(root, "index") + string(filepath.Separator)
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			size := fi.Size()
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				if st.Nlink > 1 && !fi.IsDir() {
					k := inode{uint64(st.Dev), st.Ino}
					if seen[k] {
						return nil
					}
					seen[k] = true
				}
				if strings.HasPrefix(p, index) && (strings.HasSuffix(p, ".mem") || strings.HasSuffix(p, ".vlog")) &&
					fi.Mode().IsRegular() && st.Blocks*512 < size {
					size = st.Blocks * 512
				}
			}
			total += size
			return nil
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return total, fmt.Errorf("du %s: %w", root, err)
		}
	}
	return total, nil
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// Evict implements Admin.
func (l *Local) Evict(ctx context.Context, req EvictRequest) ([]EvictRecord, error) {
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
		return l.evictDigest(ctx, req)
	case req.Image != "":
		if req.Tier != "" {
			return nil, fmt.Errorf("%w: evicting an image applies to every tier; drop --tier", ErrInvalidRequest)
		}
		return l.evictImage(ctx, req.Image)
	}
	sel, err := l.selectTiers(req.Tier, true)
	if err != nil {
		return nil, err
	}
	var out []EvictRecord
	for _, e := range sel {
		var rec EvictRecord
		var err error
		if req.OlderThan > 0 {
			rec, err = l.evictOlder(ctx, e, time.Now().Add(-time.Duration(req.OlderThan)))
		} else {
			rec, err = l.evictTo(ctx, e, int64(req.ToSize))
		}
		if err != nil {
			return out, err
		}
		out = append(out, rec)
	}
	return out, nil
}

func (l *Local) evictDigest(ctx context.Context, req EvictRequest) ([]EvictRecord, error) {
	d, err := blob.ParseDigest(req.Digest)
	if err != nil {
		return nil, err
	}
	sel, err := l.selectTiers(req.Tier, false)
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

// evictImage forgets the image ref names (fetcher.InvalidateCache), then
// the ext4 images derived from its manifests where no cached image keeps
// those manifests: their derivation refs and derived blobs in the local
// tiers, and the images handed out in the ext4 directory. It reports, per
// local tier, the blobs that were there before and are gone after (so
// never a negative count), then the ext4 images removed as the pseudo-tier
// "ext4". An image no tier records (no tag ref, no membership, no
// manifest) is an error wrapping blob.ErrNotFound.
func (l *Local) evictImage(ctx context.Context, ref string) ([]EvictRecord, error) {
	r, err := registry.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	if ok, err := l.imageRecorded(ctx, r); err != nil {
		return nil, err
	} else if !ok {
		return nil, fmt.Errorf("image %s: %w: it is not cached here", ref, blob.ErrNotFound)
	}
	local := l.p.Stack.Local()
	before, err := localBlobs(ctx, local)
	if err != nil {
		return nil, err
	}
	if err := l.p.Fetcher.InvalidateCache(ctx, ref); err != nil {
		return nil, err
	}
	mid, err := localBlobs(ctx, local)
	if err != nil {
		return nil, err
	}
	gone := map[blob.Digest]bool{}
	for _, held := range before {
		for d := range held {
			if !heldByAny(mid, d) {
				gone[d] = true
			}
		}
	}
	if err := l.forgetDerived(ctx, local, gone); err != nil {
		return nil, err
	}
	after, err := localBlobs(ctx, local)
	if err != nil {
		return nil, err
	}
	var out []EvictRecord
	for _, e := range local.Tiers() {
		name := e.Tier.Name()
		rec := EvictRecord{Tier: name}
		for d, size := range before[name] {
			if _, still := after[name][d]; !still {
				rec.Blobs++
				rec.Bytes += size
			}
		}
		out = append(out, rec)
	}
	n, freed, err := l.p.Ext4.Prune(ctx)
	if err != nil {
		return out, fmt.Errorf("evict: ext4 images: %w", err)
	}
	return append(out, EvictRecord{Tier: UsageExt4, Blobs: n, Bytes: freed}), nil
}

// imageRecorded reports whether some tier records the image r names: its
// tag ref, or for a digest reference its membership ref or its manifest.
func (l *Local) imageRecorded(ctx context.Context, r registry.Reference) (bool, error) {
	var err error
	if d := r.Digest(); d != "" {
		_, err = l.p.Stack.GetRef(ctx, blob.MemberKey(r.Repo().String(), d))
		if errors.Is(err, blob.ErrNotFound) {
			_, err = l.p.Stack.Stat(ctx, d)
		}
	} else {
		_, err = l.p.Stack.GetRef(ctx, blob.RefKey{Namespace: blob.NamespaceTag, Name: r.Repo().String() + ":" + r.Tag()})
	}
	if errors.Is(err, blob.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// forgetDerived removes from the local tiers the derivation refs of the
// images whose manifest is in gone, and the derived blobs no remaining
// derivation ref points at.
func (l *Local) forgetDerived(ctx context.Context, local *tiers.Stack, gone map[blob.Digest]bool) error {
	type derived struct {
		t blob.Tier
		k blob.RefKey
		d blob.Digest
	}
	var drop []derived
	keep := map[blob.Digest]bool{}
	for _, e := range local.Tiers() {
		err := e.Tier.WalkRefs(ctx, blob.NamespaceDerived, func(k blob.RefKey, r blob.Ref) error {
			img, _, _ := strings.Cut(k.Name, "|")
			if gone[blob.Digest(img)] {
				drop = append(drop, derived{e.Tier, k, r.Digest})
			} else {
				keep[r.Digest] = true
			}
			return nil
		})
		if err != nil && !errors.Is(err, blob.ErrUnsupported) {
			return fmt.Errorf("evict: derivation refs of %s: %w", e.Tier.Name(), err)
		}
	}
	for _, x := range drop {
		if err := x.t.DeleteRef(ctx, x.k); err != nil && !errors.Is(err, blob.ErrNotFound) {
			return fmt.Errorf("evict: %w", err)
		}
		if keep[x.d] {
			continue
		}
		if err := x.t.Delete(ctx, x.d); err != nil && !errors.Is(err, blob.ErrNotFound) {
			return fmt.Errorf("evict: derived image %s: %w", x.d, err)
		}
	}
	return nil
}

// localBlobs lists the blobs of each tier of local: tier -> digest -> size.
func localBlobs(ctx context.Context, local *tiers.Stack) (map[string]map[blob.Digest]int64, error) {
	out := map[string]map[blob.Digest]int64{}
	for _, e := range local.Tiers() {
		infos, err := walkAll(ctx, e.Tier)
		if err != nil {
			return nil, err
		}
		m := make(map[blob.Digest]int64, len(infos))
		for _, i := range infos {
			m[i.Digest] = i.Size
		}
		out[e.Tier.Name()] = m
	}
	return out, nil
}

func heldByAny(held map[string]map[blob.Digest]int64, d blob.Digest) bool {
	for _, m := range held {
		if _, ok := m[d]; ok {
			return true
		}
	}
	return false
}

// evictOlder removes blobs of one tier last accessed before cutoff.
func (l *Local) evictOlder(ctx context.Context, e tiers.Entry, cutoff time.Time) (EvictRecord, error) {
	name := e.Tier.Name()
	if name == TierDisk && l.p.Disk != nil {
		n, freed, err := l.p.Disk.EvictOlderThan(ctx, cutoff)
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
func (l *Local) evictTo(ctx context.Context, e tiers.Entry, target int64) (EvictRecord, error) {
	name := e.Tier.Name()
	if name == TierDisk && l.p.Disk != nil {
		n, freed, err := l.p.Disk.EvictTo(ctx, target)
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
func (l *Local) Verify(ctx context.Context, req VerifyRequest) ([]VerifyRecord, error) {
	sel, err := l.selectTiers(req.Tier, true)
	if err != nil {
		return nil, err
	}
	var out []VerifyRecord
	for _, e := range sel {
		name := e.Tier.Name()
		if e.Shared {
			return nil, fmt.Errorf("verify %s: %w (a shared tier verifies on every read)", name, blob.ErrUnsupported)
		}
		if name == TierDisk && l.p.Disk != nil {
			// Blobs whose file had vanished before the tier was opened: its
			// reconciliation forgot their rows, so the walk below cannot
			// meet them. Reported once.
			for _, d := range l.takeForgotten() {
				out = append(out, VerifyRecord{Tier: name, Digest: d.String(), Status: StatusMissing, Removed: true,
					Error: fmt.Sprintf("%s: %v: its file was missing or truncated when the disk tier was opened, and its index row was dropped", d, blob.ErrNotFound)})
			}
			err := l.p.Disk.Verify(ctx, req.Remove, func(i blob.Info, err error) {
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
	if req.Overlay {
		recs, err := l.verifyOverlay(ctx, req.Remove)
		out = append(out, recs...)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// verifyOverlay re-checks every extracted overlay layer (see
// overlay.Materializer.Verify): modified layers are dropped unless leased,
// unverifiable ones only with remove.
func (l *Local) verifyOverlay(ctx context.Context, remove bool) ([]VerifyRecord, error) {
	var out []VerifyRecord
	for _, d := range l.p.Overlay.Layers() {
		chk, err := l.p.Overlay.Verify(ctx, d, remove)
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
		rec := VerifyRecord{Tier: UsageOverlay, Digest: d.String(), Size: chk.Bytes, Status: StatusOK, Removed: chk.Removed}
		switch {
		case errors.Is(err, blob.ErrNotFound):
			continue // evicted meanwhile
		case err != nil:
			rec.Status, rec.Error = StatusError, err.Error()
		case chk.Status == overlay.LayerModified:
			rec.Status = StatusCorrupt
			rec.Error = "layer directory modified since extraction: " + strings.Join(chk.Differences, "; ")
		case chk.Status == overlay.LayerUnverifiable:
			rec.Status = StatusUnverifiable
			rec.Error = strings.Join(chk.Differences, "; ")
		}
		switch {
		case chk.Leased && chk.Removed:
			rec.Error += " (taken out of service; removed when its leases and mounts are released)"
		case chk.Leased:
			rec.Error += " (kept: a lease holds it; release it and verify again)"
		}
		out = append(out, rec)
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

// takeForgotten returns the disk tier's forgotten blobs (see
// disk.Tier.Forgotten) the first time it is called, then nothing.
func (l *Local) takeForgotten() []blob.Digest {
	var out []blob.Digest
	l.forgottenOnce.Do(func() { out = l.p.Disk.Forgotten() })
	return out
}

// GC implements Admin.
func (l *Local) GC(ctx context.Context) (GCResult, error) {
	var res GCResult
	stale, err := l.p.Overlay.DropStaleMounts()
	if err != nil {
		return res, fmt.Errorf("gc: %w", err)
	}
	res.StaleMounts = len(stale)
	res.Mounts = len(l.p.Overlay.Mounts())
	n, err := l.p.Disk.PurgeExpiredRefs(ctx)
	if err != nil {
		return res, fmt.Errorf("gc: expired refs: %w", err)
	}
	res.ExpiredRefs = n
	for _, e := range l.p.Stack.Tiers() {
		if e.Shared {
			continue
		}
		type orphan struct{ k blob.RefKey }
		var orphans []orphan
		for _, ns := range []string{blob.NamespaceTag, blob.NamespaceMember, blob.NamespaceDerived} {
			err := e.Tier.WalkRefs(ctx, ns, func(k blob.RefKey, r blob.Ref) error {
				if _, err := l.p.Stack.Stat(ctx, r.Digest); errors.Is(err, blob.ErrNotFound) {
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
	before := l.p.Overlay.Usage()
	if err := l.p.Overlay.Cleanup(ctx); err != nil {
		return res, fmt.Errorf("gc: overlay layers: %w", err)
	}
	after := l.p.Overlay.Usage()
	res.Layers = before.Layers - after.Layers
	res.LayerBytes = before.Bytes - after.Bytes
	res.LayersLeased = after.Leased
	// ext4 images whose derivation ref went (with the orphans above, or
	// evicted): both converters share one work directory.
	if res.Ext4Images, res.Ext4Bytes, err = l.p.Ext4.Prune(ctx); err != nil {
		return res, fmt.Errorf("gc: ext4 images: %w", err)
	}
	n, freed, err := l.p.Ext4.ApplyBudget(ctx)
	res.Ext4Images += n
	res.Ext4Bytes += freed
	if err != nil {
		return res, fmt.Errorf("gc: ext4 budget: %w", err)
	}
	// Leftovers of killed conversions: of any age when no other process
	// uses ext4-dir (the converter knows; ext4-dir may lie outside the
	// root and be shared), else those a day old.
	if res.Ext4TempFiles, res.Ext4TempBytes, err = l.p.Ext4.RemoveStale(ctx); err != nil {
		return res, fmt.Errorf("gc: %w", err)
	}
	return res, nil
}

// Mounts implements Admin.
func (l *Local) Mounts(ctx context.Context) ([]MountRecord, error) {
	out := []MountRecord{}
	for _, ml := range l.p.Overlay.Mounts() {
		out = append(out, mountRecord(ml))
	}
	return out, nil
}

// ReleaseMount implements Admin.
func (l *Local) ReleaseMount(ctx context.Context, dir string) (MountRecord, error) {
	if !filepath.IsAbs(dir) {
		return MountRecord{}, fmt.Errorf("%w: mount directory %q is not absolute", ErrInvalidRequest, dir)
	}
	ml, err := l.p.Overlay.ReleaseMount(dir)
	switch {
	case errors.Is(err, overlay.ErrNoMountLease):
		return MountRecord{}, fmt.Errorf("%w: %w (nothing was mounted there by materialize --mount)", blob.ErrNotFound, err)
	case errors.Is(err, overlay.ErrStillMounted):
		return MountRecord{}, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	case err != nil:
		return MountRecord{}, err
	}
	return mountRecord(ml), nil
}

func mountRecord(ml overlay.MountLease) MountRecord {
	r := MountRecord{Target: ml.Target, Image: ml.Image, Created: ml.Created, Layers: []string{}}
	for _, d := range ml.Layers {
		r.Layers = append(r.Layers, d.String())
	}
	return r
}

// Metrics implements Admin.
func (l *Local) Metrics(ctx context.Context, w io.Writer) error {
	if l.p.Gatherer == nil {
		return fmt.Errorf("metrics: %w: the host was opened without a prometheus.Gatherer", blob.ErrUnsupported)
	}
	mfs, err := l.p.Gatherer.Gather()
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
