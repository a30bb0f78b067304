package tiertest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/strata-oci/strata/blob"
)

// naive is a deliberately simple map-backed blob.Tier, written
// independently of tiers/memory, that the suite runs against. Each flag in
// bugs breaks one rule of the contract, so the self-test can check that the
// suite notices.
type naive struct {
	bugs    map[string]bool
	maxBlob int64

	mu     sync.Mutex
	closed bool
	blobs  map[blob.Digest][]byte
	refs   map[string]naiveRef
}

type naiveRef struct {
	k blob.RefKey
	r blob.Ref
}

func newNaive(bugs string, maxBlob int64) *naive {
	n := &naive{bugs: map[string]bool{}, maxBlob: maxBlob, blobs: map[blob.Digest][]byte{}, refs: map[string]naiveRef{}}
	for b := range strings.SplitSeq(bugs, ",") {
		if b != "" {
			n.bugs[b] = true
		}
	}
	return n
}

var errNaiveClosed = fmt.Errorf("naive: %w: closed", blob.ErrUnavailable)

func (n *naive) Name() string { return "naive" }

// check validates d and ctx and takes the lock; the caller unlocks.
func (n *naive) check(ctx context.Context, d blob.Digest) error {
	if !n.bugs["ignoreCtx"] {
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	if !n.bugs["noValidate"] {
		if err := blob.ValidateDigest(d); err != nil {
			return err
		}
	}
	n.mu.Lock()
	if n.closed && !n.bugs["closeNoop"] {
		n.mu.Unlock()
		return errNaiveClosed
	}
	return nil
}

func (n *naive) miss(d blob.Digest) error {
	if n.bugs["missNotWrapped"] {
		return errors.New("no such blob " + string(d))
	}
	return fmt.Errorf("naive: %s: %w", d, blob.ErrNotFound)
}

func (n *naive) Stat(ctx context.Context, d blob.Digest) (blob.Info, error) {
	if err := n.check(ctx, d); err != nil {
		return blob.Info{}, err
	}
	defer n.mu.Unlock()
	b, ok := n.blobs[d]
	if !ok {
		return blob.Info{}, n.miss(d)
	}
	return n.info(d, b), nil
}

func (n *naive) info(d blob.Digest, b []byte) blob.Info {
	info := blob.Info{Digest: d, Size: int64(len(b)), Tier: "naive"}
	if n.bugs["infoNoTier"] {
		info.Tier = ""
	}
	return info
}

type naiveReader struct {
	ctx context.Context
	r   *bytes.Reader
	bug map[string]bool
}

func (r *naiveReader) Read(p []byte) (int, error) {
	if !r.bug["ignoreCtx"] {
		if err := r.ctx.Err(); err != nil {
			return 0, err
		}
	}
	return r.r.Read(p)
}

func (r *naiveReader) Close() error {
	if r.bug["readerCloseErr"] {
		return errors.New("naive: close failed")
	}
	return nil
}

func (n *naive) Open(ctx context.Context, d blob.Digest) (io.ReadCloser, blob.Info, error) {
	if err := n.check(ctx, d); err != nil {
		return nil, blob.Info{}, err
	}
	defer n.mu.Unlock()
	b, ok := n.blobs[d]
	if !ok {
		return nil, blob.Info{}, n.miss(d)
	}
	var rc io.ReadCloser = &naiveReader{ctx: ctx, r: bytes.NewReader(b), bug: n.bugs}
	if !n.bugs["noReadVerify"] {
		rc = blob.NewVerifier(rc, d, int64(len(b)), func(error) {
			n.mu.Lock()
			defer n.mu.Unlock()
			delete(n.blobs, d)
		})
	}
	return rc, n.info(d, b), nil
}

// corrupt flips one stored byte of d.
func (n *naive) corrupt(d blob.Digest) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if b := n.blobs[d]; len(b) > 0 {
		b[len(b)/2] ^= 0x20
	}
}

type naiveCtxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c naiveCtxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func (n *naive) Put(ctx context.Context, d blob.Digest, size int64, r io.Reader) error {
	if err := n.check(ctx, d); err != nil {
		return err
	}
	_, exists := n.blobs[d]
	n.mu.Unlock()
	if exists {
		if n.bugs["putNotIdempotent"] {
			return errors.New("naive: already exists")
		}
		return nil
	}
	if size < 0 {
		return errors.New("naive: negative size")
	}
	if n.maxBlob > 0 && size > n.maxBlob && !n.bugs["tooLargeReadsAll"] {
		return blob.ErrTooLarge
	}
	if !n.bugs["ignoreCtx"] {
		r = naiveCtxReader{ctx, r}
	}
	var b []byte
	var err error
	switch {
	case n.bugs["noVerify"]:
		b, err = io.ReadAll(io.LimitReader(r, size))
	case n.bugs["onlyDigest"]:
		b, err = io.ReadAll(io.LimitReader(r, max(n.maxBlob, size)+1))
		if err == nil && blob.FromBytes(b) != d {
			err = &blob.MismatchError{Want: d, WantSize: size, Got: blob.FromBytes(b), GotSize: int64(len(b))}
		}
	default:
		b, err = io.ReadAll(blob.NewVerifier(r, d, size, nil))
	}
	if err != nil {
		return err
	}
	if n.maxBlob > 0 && size > n.maxBlob {
		return blob.ErrTooLarge
	}
	if !n.bugs["ignoreCtx"] {
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed && !n.bugs["closeNoop"] {
		return errNaiveClosed
	}
	n.blobs[d] = b
	return nil
}

func (n *naive) Delete(ctx context.Context, d blob.Digest) error {
	if err := n.check(ctx, d); err != nil {
		return err
	}
	defer n.mu.Unlock()
	if n.bugs["noBlobDelete"] || n.bugs["noBlobDeleteUndeclared"] {
		return blob.ErrUnsupported
	}
	if _, ok := n.blobs[d]; !ok {
		return n.miss(d)
	}
	if !n.bugs["deleteNoop"] {
		delete(n.blobs, d)
	}
	return nil
}

func (n *naive) Walk(ctx context.Context, fn func(blob.Info) error) error {
	if err := n.check(ctx, blob.EmptyDigest); err != nil {
		return err
	}
	var infos []blob.Info
	for d, b := range n.blobs {
		infos = append(infos, n.info(d, b))
	}
	n.mu.Unlock()
	for _, info := range infos {
		if err := fn(info); err != nil && !n.bugs["walkIgnoresFnErr"] {
			return err
		}
	}
	return nil
}

func (n *naive) refKey(k blob.RefKey) string {
	switch {
	case n.bugs["ignoreScope"]:
		return k.Namespace + "\x00" + k.Name
	case n.bugs["joinKey"]:
		return k.Namespace + "/" + k.Scope + "/" + k.Name
	}
	return k.String()
}

func (n *naive) checkRef(ctx context.Context, k blob.RefKey) error {
	if err := k.Validate(); err != nil && !n.bugs["noValidate"] {
		return err
	}
	return n.check(ctx, blob.EmptyDigest)
}

func (n *naive) expired(r blob.Ref) bool {
	return !n.bugs["ignoreExpiry"] && r.Expired(time.Now())
}

func (n *naive) GetRef(ctx context.Context, k blob.RefKey) (blob.Ref, error) {
	if err := n.checkRef(ctx, k); err != nil {
		return blob.Ref{}, err
	}
	defer n.mu.Unlock()
	e, ok := n.refs[n.refKey(k)]
	if !ok || n.expired(e.r) {
		return blob.Ref{}, fmt.Errorf("naive: ref %s: %w", k, blob.ErrNotFound)
	}
	return e.r, nil
}

func (n *naive) PutRef(ctx context.Context, k blob.RefKey, r blob.Ref) error {
	if !n.bugs["noValidate"] {
		if err := r.Validate(); err != nil {
			return err
		}
	}
	if err := n.checkRef(ctx, k); err != nil {
		return err
	}
	defer n.mu.Unlock()
	if n.bugs["expiresLost"] {
		r.Expires = time.Time{}
	}
	n.refs[n.refKey(k)] = naiveRef{k, r}
	return nil
}

func (n *naive) DeleteRef(ctx context.Context, k blob.RefKey) error {
	if err := n.checkRef(ctx, k); err != nil {
		return err
	}
	defer n.mu.Unlock()
	e, ok := n.refs[n.refKey(k)]
	if !ok || n.expired(e.r) {
		return fmt.Errorf("naive: ref %s: %w", k, blob.ErrNotFound)
	}
	delete(n.refs, n.refKey(k))
	return nil
}

func (n *naive) WalkRefs(ctx context.Context, namespace string, fn func(blob.RefKey, blob.Ref) error) error {
	if err := n.check(ctx, blob.EmptyDigest); err != nil {
		return err
	}
	var list []naiveRef
	for _, e := range n.refs {
		if n.expired(e.r) {
			continue
		}
		if namespace == "" || e.k.Namespace == namespace || (n.bugs["walkRefsPrefix"] && strings.HasPrefix(e.k.Namespace, namespace)) {
			list = append(list, e)
		}
	}
	n.mu.Unlock()
	for _, e := range list {
		if err := fn(e.k, e.r); err != nil {
			return err
		}
	}
	return nil
}

func (n *naive) Usage(ctx context.Context) (blob.Usage, error) {
	if err := n.check(ctx, blob.EmptyDigest); err != nil {
		return blob.Usage{}, err
	}
	defer n.mu.Unlock()
	u := blob.Usage{Blobs: int64(len(n.blobs)), Refs: int64(len(n.refs))}
	for _, b := range n.blobs {
		u.Bytes += int64(len(b))
	}
	return u, nil
}

func (n *naive) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	return nil
}
