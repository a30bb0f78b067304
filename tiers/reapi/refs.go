package reapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/strata-oci/strata/blob"
)

// refMetaVersion is the version of the strata-ref.json document.
const refMetaVersion = 1

// maxRefMeta bounds the strata-ref.json blob the tier will read.
const maxRefMeta = 64 << 10

// refMeta is the strata-ref.json document stored in the CAS next to every
// ref entry. docs/reapi.md documents its fields.
type refMeta struct {
	Version   int        `json:"version"`
	Namespace string     `json:"namespace"`
	Scope     string     `json:"scope"`
	Name      string     `json:"name"`
	Digest    string     `json:"digest,omitempty"`
	Size      int64      `json:"size"`
	MediaType string     `json:"mediaType,omitempty"`
	Expires   *time.Time `json:"expires,omitempty"`
	Deleted   bool       `json:"deleted,omitempty"`
}

func (m refMeta) key() blob.RefKey {
	return blob.RefKey{Namespace: m.Namespace, Scope: m.Scope, Name: m.Name}
}

// GetRef reads the ref's ActionCache entry and its strata-ref.json. A
// missing entry, a tombstone (DeleteRef) and an expired ref are all
// blob.ErrNotFound; so is an entry that is not a well-formed Strata ref of
// this key (a newer format version, say).
func (t *Tier) GetRef(ctx context.Context, k blob.RefKey) (blob.Ref, error) {
	if err := k.Validate(); err != nil {
		return blob.Ref{}, err
	}
	res, meta, err := t.readRef(ctx, k)
	if err != nil {
		return blob.Ref{}, err
	}
	r, why := decodeRef(k, res, meta, t.cfg.Now())
	if why != "" {
		return blob.Ref{}, fmt.Errorf("reapi %q: get ref %s: %w (%s)", t.cfg.Name, k, blob.ErrNotFound, why)
	}
	t.learnSize(r.Digest, r.Size, false)
	return r, nil
}

// decodeRef interprets k's ActionCache entry res and its strata-ref.json
// bytes meta at time now. It returns the ref, or why the entry is not a
// live ref of k (a tombstone, expired, another version or key, malformed).
// Both inputs come from the server and are untrusted.
func decodeRef(k blob.RefKey, res *repb.ActionResult, meta []byte, now time.Time) (blob.Ref, string) {
	var m refMeta
	if err := json.Unmarshal(meta, &m); err != nil {
		return blob.Ref{}, metaOutput + " is not valid JSON"
	}
	switch {
	case m.Version != refMetaVersion:
		return blob.Ref{}, fmt.Sprintf("%s version %d, this reader knows %d", metaOutput, m.Version, refMetaVersion)
	case m.key() != k:
		return blob.Ref{}, "entry names another key"
	case m.Deleted:
		return blob.Ref{}, "deleted"
	}
	r := blob.Ref{Size: m.Size, MediaType: m.MediaType}
	if m.Expires != nil {
		r.Expires = *m.Expires
		if r.Expired(now) {
			return blob.Ref{}, "expired at " + m.Expires.Format(time.RFC3339)
		}
	}
	bf := findOutput(res, blobOutput)
	if bf == nil {
		return blob.Ref{}, "entry has no " + blobOutput + " output"
	}
	d, err := fromREAPI(bf.GetDigest().GetHash(), bf.GetDigest().GetSizeBytes())
	if err != nil || string(d) != m.Digest || bf.GetDigest().GetSizeBytes() != m.Size {
		return blob.Ref{}, "entry's blob output disagrees with its " + metaOutput
	}
	r.Digest = d
	if r.Validate() != nil {
		return blob.Ref{}, "entry holds an invalid ref"
	}
	return r, ""
}

// readRef fetches k's entry and its verified strata-ref.json bytes.
func (t *Tier) readRef(ctx context.Context, k blob.RefKey) (*repb.ActionResult, []byte, error) {
	ka := refKeyAction(k)
	notFound := func(why string) error {
		return fmt.Errorf("reapi %q: get ref %s: %w (%s)", t.cfg.Name, k, blob.ErrNotFound, why)
	}
	res, err := t.getActionResult(ctx, ka.digest, []string{metaOutput})
	if err != nil {
		return nil, nil, t.convert(ctx, "get ref", k.String(), err)
	}
	mf := findOutput(res, metaOutput)
	if mf == nil || mf.GetDigest() == nil {
		return nil, nil, notFound("entry has no " + metaOutput + " output")
	}
	md := mf.GetDigest()
	if md.GetSizeBytes() <= 0 || md.GetSizeBytes() > maxRefMeta {
		return nil, nil, notFound(fmt.Sprintf("%s of %d bytes", metaOutput, md.GetSizeBytes()))
	}
	mdd, err := fromREAPI(md.GetHash(), md.GetSizeBytes())
	if err != nil {
		return nil, nil, notFound(metaOutput + " digest is malformed")
	}
	if c := mf.GetContents(); len(c) > 0 {
		// Inlined by the server: verify like any other bytes from it.
		var buf bytes.Buffer
		if _, err := blob.Copy(&buf, bytes.NewReader(c), mdd, md.GetSizeBytes()); err != nil {
			return nil, nil, fmt.Errorf("reapi %q: get ref %s: inlined %s: %w", t.cfg.Name, k, metaOutput, err)
		}
		return res, buf.Bytes(), nil
	}
	data, err := t.readSmall(ctx, toREAPI(mdd, md.GetSizeBytes()))
	if status.Code(err) == codes.NotFound {
		return nil, nil, notFound(metaOutput + " was evicted from the CAS")
	}
	if err != nil {
		return nil, nil, t.convert(ctx, "get ref", k.String(), err)
	}
	return res, data, nil
}

// PutRef writes k -> r. Strict servers (bazel-remote, Buildbarn) refuse an
// ActionCache entry whose outputs are not in the CAS, so PutRef first
// checks with FindMissingBlobs that r's blob is present (blob.ErrNotFound,
// and nothing written, if not), then uploads strata-ref.json and the key's
// Command and Action, and only then calls UpdateActionResult.
func (t *Tier) PutRef(ctx context.Context, k blob.RefKey, r blob.Ref) error {
	if err := k.Validate(); err != nil {
		return err
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("reapi %q: put ref %s: %w", t.cfg.Name, k, err)
	}
	caps, err := t.capabilities(ctx)
	if err != nil {
		return err
	}
	if !caps.acWritable {
		return fmt.Errorf("reapi %q: put ref %s: %w: the server does not allow ActionCache updates", t.cfg.Name, k, blob.ErrUnsupported)
	}
	target := toREAPI(r.Digest, r.Size)
	missing, err := t.findMissing(ctx, target)
	if err != nil {
		return t.convert(ctx, "put ref", k.String(), err)
	}
	if missing {
		return fmt.Errorf("reapi %q: put ref %s: %w: its blob %s (%d bytes) is not in the CAS; Put it first (strict servers refuse ActionCache entries whose outputs are missing)",
			t.cfg.Name, k, blob.ErrNotFound, r.Digest, r.Size)
	}
	m := refMeta{Version: refMetaVersion, Namespace: k.Namespace, Scope: k.Scope, Name: k.Name,
		Digest: string(r.Digest), Size: r.Size, MediaType: r.MediaType}
	if !r.Expires.IsZero() {
		e := r.Expires.UTC()
		m.Expires = &e
	}
	res := &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: blobOutput, Digest: target.ToProto()}}}
	if err := t.writeRef(ctx, caps, k, m, res); err != nil {
		return err
	}
	t.learnSize(r.Digest, r.Size, false)
	t.markPresent(r.Digest)
	return nil
}

// DeleteRef overwrites k's entry with a tombstone (REAPI cannot delete an
// ActionCache entry): an ActionResult whose only output is a
// strata-ref.json with "deleted": true. It returns blob.ErrNotFound when k
// is absent, expired or already deleted.
func (t *Tier) DeleteRef(ctx context.Context, k blob.RefKey) error {
	if err := k.Validate(); err != nil {
		return err
	}
	if _, err := t.GetRef(ctx, k); err != nil {
		return err
	}
	caps, err := t.capabilities(ctx)
	if err != nil {
		return err
	}
	m := refMeta{Version: refMetaVersion, Namespace: k.Namespace, Scope: k.Scope, Name: k.Name, Deleted: true}
	return t.writeRef(ctx, caps, k, m, &repb.ActionResult{})
}

// writeRef uploads m as strata-ref.json, adds it to res's outputs and
// writes res under k's key.
func (t *Tier) writeRef(ctx context.Context, caps *serverCaps, k blob.RefKey, m refMeta, res *repb.ActionResult) error {
	data, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("reapi %q: put ref %s: %w", t.cfg.Name, k, err)
	}
	md := bytesDigest(data)
	res.OutputFiles = append(res.OutputFiles, &repb.OutputFile{Path: metaOutput, Digest: md.ToProto()})
	res.ExecutionMetadata = &repb.ExecutedActionMetadata{Worker: worker}
	if err := t.writeAC(ctx, caps, refKeyAction(k), res, []batchBlob{{d: md, data: data}}); err != nil {
		return t.convert(ctx, "put ref", k.String(), err)
	}
	return nil
}
