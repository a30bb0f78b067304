package overlay

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/strata-oci/strata/blob"
)

// Mount lease errors.
var (
	// ErrNoMountLease: no mount lease names that directory.
	ErrNoMountLease = errors.New("no mount lease")
	// ErrStillMounted: ReleaseMount was asked to let go of the layers of
	// an overlay that is still mounted (unmount it first).
	ErrStillMounted = errors.New("still mounted")
)

// mountsDir is the directory under Root that holds mount leases.
const mountsDir = "mounts"

// MountLease holds the layers of an overlay mounted at Target beyond the
// life of the process that mounted it: it is recorded on disk
// (Root/mounts/<ID>.json) and, like a Lease, keeps its layers from budget
// eviction and Cleanup. It ends with ReleaseMount, or when DropStaleMounts
// finds the mount gone.
type MountLease struct {
	// ID names the lease; it is derived from Target (one lease per
	// directory).
	ID string `json:"id"`
	// Target is the mount point, absolute with symlinks resolved (as
	// /proc/self/mountinfo shows it).
	Target string `json:"target"`
	// Image is what the caller said was mounted (a reference), for people.
	Image string `json:"image,omitempty"`
	// Layers are the digests of the layers the mount uses.
	Layers []blob.Digest `json:"layers"`
	// MountNS is the mount namespace the mount was made in
	// (/proc/self/ns/mnt); a process in another one cannot see the mount
	// and so never judges the lease stale.
	MountNS string    `json:"mount_ns,omitempty"`
	Created time.Time `json:"created"`
}

// mountRec is a loaded mount lease and the entries it holds a lease on.
type mountRec struct {
	lease   MountLease
	entries []*layerEntry
}

// mountID is the lease id of a target.
func mountID(target string) string {
	sum := sha256.Sum256([]byte(target))
	return hex.EncodeToString(sum[:12])
}

// resolveTarget makes dir absolute and resolves its symlinks where it can
// (a directory removed since is kept as given, cleaned).
func resolveTarget(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		return r, nil
	}
	return abs, nil
}

// RecordMount records a mount lease on the layers of r, which the caller
// has just mounted at target (see Result.Mount): the layers stay until
// ReleaseMount(target), or until DropStaleMounts finds no overlay mounted
// at target any more. A lease already recorded for target is replaced.
// image is kept for people (blobctl prints it). r must come from m and its
// Lease must not have been released yet.
func (m *Materializer) RecordMount(r *Result, target, image string) (MountLease, error) {
	if r == nil || r.Lease == nil || r.Lease.m != m {
		return MountLease{}, errors.New("overlay: RecordMount: the result is not this materializer's")
	}
	t, err := resolveTarget(target)
	if err != nil {
		return MountLease{}, fmt.Errorf("overlay: mount lease: %w", err)
	}
	ml := MountLease{ID: mountID(t), Target: t, Image: image, MountNS: mountNS(), Created: time.Now().UTC()}
	seen := map[blob.Digest]bool{}
	var entries []*layerEntry
	for _, e := range r.Lease.entries {
		if e == nil || seen[e.digest] {
			continue
		}
		seen[e.digest] = true
		ml.Layers = append(ml.Layers, e.digest)
		entries = append(entries, e)
	}
	if err := m.writeMount(ml); err != nil {
		return MountLease{}, fmt.Errorf("overlay: mount lease for %s: %w", t, err)
	}
	m.mu.Lock()
	// The caller's lease is held, so every entry is still indexed.
	for _, e := range entries {
		e.leases++
	}
	old := m.mounts[ml.ID]
	m.mounts[ml.ID] = &mountRec{lease: ml, entries: entries}
	if old != nil {
		for _, e := range old.entries {
			m.unleaseLocked(e)
		}
	}
	m.mu.Unlock()
	return ml, nil
}

// Mounts returns the mount leases, ordered by target.
func (m *Materializer) Mounts() []MountLease {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]MountLease, 0, len(m.mounts))
	for _, r := range m.mounts {
		out = append(out, r.lease)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Target < out[j].Target })
	return out
}

// ReleaseMount ends the mount lease of dir (the caller has unmounted it)
// and returns it. It fails with ErrNoMountLease when no lease names dir,
// and with ErrStillMounted while an overlay is still mounted there (as far
// as this process's mount namespace shows). The layers may be evicted
// afterwards.
func (m *Materializer) ReleaseMount(dir string) (MountLease, error) {
	t, err := resolveTarget(dir)
	if err != nil {
		return MountLease{}, fmt.Errorf("overlay: release mount: %w", err)
	}
	m.mu.Lock()
	rec := m.mounts[mountID(t)]
	m.mu.Unlock()
	if rec == nil {
		return MountLease{}, fmt.Errorf("overlay: %s: %w", t, ErrNoMountLease)
	}
	if gone, err := mountGone(rec.lease); err != nil {
		return MountLease{}, fmt.Errorf("overlay: release mount %s: %w", t, err)
	} else if !gone {
		return MountLease{}, fmt.Errorf("overlay: %s: %w (unmount it first)", t, ErrStillMounted)
	}
	if err := m.dropMount(rec); err != nil {
		return MountLease{}, err
	}
	m.evict()
	return rec.lease, nil
}

// DropStaleMounts ends every mount lease whose mount is gone (no overlay
// mounted at its target any more, in the mount namespace it was made in)
// and returns them, with those New dropped the first time it is called.
// New runs it (unless Config.NoEvict).
func (m *Materializer) DropStaleMounts() ([]MountLease, error) {
	m.mu.Lock()
	recs := make([]*mountRec, 0, len(m.mounts))
	for _, r := range m.mounts {
		recs = append(recs, r)
	}
	dropped := m.staleAtOpen
	m.staleAtOpen = nil
	m.mu.Unlock()
	for _, r := range recs {
		gone, err := mountGone(r.lease)
		if err != nil {
			return dropped, fmt.Errorf("overlay: mount leases: %w", err)
		}
		if !gone {
			continue
		}
		if err := m.dropMount(r); err != nil {
			return dropped, err
		}
		dropped = append(dropped, r.lease)
	}
	return dropped, nil
}

// dropMount removes rec's file and its leases (if rec is still current).
func (m *Materializer) dropMount(rec *mountRec) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mounts[rec.lease.ID] != rec {
		return nil // replaced or dropped meanwhile
	}
	if err := os.Remove(m.path(mountsDir, rec.lease.ID+".json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("overlay: drop mount lease %s: %w", rec.lease.Target, err)
	}
	delete(m.mounts, rec.lease.ID)
	for _, e := range rec.entries {
		m.unleaseLocked(e)
	}
	return nil
}

// writeMount writes ml's file atomically.
func (m *Materializer) writeMount(ml MountLease) error {
	b, err := json.MarshalIndent(ml, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(m.path(mountsDir), ".lease-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), m.path(mountsDir, ml.ID+".json"))
}

// loadMounts reads the mount leases and takes their leases on the layers
// indexed. A file that is not a valid lease is ignored (and removed, unless
// NoEvict). The caller is New, before anything is shared.
func (m *Materializer) loadMounts() error {
	ents, err := os.ReadDir(m.path(mountsDir))
	if err != nil {
		return err
	}
	for _, de := range ents {
		p := m.path(mountsDir, de.Name())
		id, ok := strings.CutSuffix(de.Name(), ".json")
		var ml MountLease
		if ok && de.Type().IsRegular() {
			if b, err := os.ReadFile(p); err == nil && json.Unmarshal(b, &ml) == nil && ml.ID == id && filepath.IsAbs(ml.Target) && mountID(ml.Target) == id {
				rec := &mountRec{lease: ml}
				for _, d := range ml.Layers {
					if e := m.layers[d]; e != nil {
						e.leases++
						rec.entries = append(rec.entries, e)
					}
				}
				m.mounts[id] = rec
				continue
			}
		}
		if !m.cfg.NoEvict {
			os.RemoveAll(p)
		}
	}
	return nil
}

// mountNS names this process's mount namespace ("" if unknown).
func mountNS() string {
	ns, _ := os.Readlink("/proc/self/ns/mnt")
	return ns
}

// mountGone reports whether the overlay of ml is known to be unmounted: no
// overlay is mounted at its target in /proc/self/mountinfo, and this
// process runs in the mount namespace the mount was made in (in another
// one the mount cannot be seen, so it is never judged gone).
func mountGone(ml MountLease) (bool, error) {
	if ns := mountNS(); ml.MountNS != "" && ns != "" && ns != ml.MountNS {
		return false, nil
	}
	mounted, err := overlayMountedAt(ml.Target)
	return !mounted, err
}

// overlayMountedAt reports whether /proc/self/mountinfo lists an overlay
// mounted at dir.
func overlayMountedAt(dir string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f, p := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(p) < 1 {
			continue
		}
		if p[0] == "overlay" && unescapeMountinfo(f[4]) == dir {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for a space, ...) of a
// mountinfo path.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
