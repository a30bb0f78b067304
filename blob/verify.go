package blob

import (
	"crypto/sha256"
	"encoding"
	"errors"
	"hash"
	"io"
	"sync"
)

// Verifier is the one verifying reader Strata uses wherever bytes cross a
// trust boundary. It passes the underlying reader through while hashing it
// and:
//
//   - fails with a *MismatchError as soon as more than the expected size
//     arrives (so an endless or overlong stream is cut off),
//   - at EOF fails with a *MismatchError if fewer bytes arrived or the digest
//     differs, and only then returns io.EOF,
//   - calls the mismatch callback, once, so the tier that served the bytes can
//     drop its entry.
//
// A Verifier over a VerifiedReader of the same blob trusts it: it passes the
// bytes through and checks their count, but does not hash them again (a
// blob crossing a stack of tiers would otherwise be hashed once per hop).
//
// A Verifier is a PrefixHasher: it can tell the hash of the bytes it has
// passed through so far (when it trusts its reader, if that reader can).
//
// A Verifier is not safe for concurrent Reads (no io.Reader is).
type Verifier struct {
	r          io.Reader
	c          io.Closer
	want       Digest
	size       int64
	h          hash.Hash // nil when r is trusted (see VerifiedReader)
	n          int64     // bytes read from r
	dropped    int64     // of them, not passed on (the overlong read)
	err        error     // sticky terminal error (io.EOF after success)
	onMismatch func(error)
	closeOnce  sync.Once
	closeErr   error
}

// NewVerifier verifies r against want and size. size < 0 means the size is
// not known in advance; then only the digest is checked. onMismatch may be
// nil. If r is also an io.Closer, Close closes it.
func NewVerifier(r io.Reader, want Digest, size int64, onMismatch func(error)) *Verifier {
	v := &Verifier{r: r, want: want, size: size, onMismatch: onMismatch}
	if !trusts(r, want, size) {
		v.h = sha256.New()
	}
	if c, ok := r.(io.Closer); ok {
		v.c = c
	}
	return v
}

// VerifiedReader is a reader that checks its own content: it returns io.EOF
// only after the bytes it yielded, from the blob's first byte on, were
// exactly the blob VerifiedBlob names, and otherwise fails the Read that
// would have ended the stream. A size below zero means only the digest is
// checked. Verifier is one; so are the registry client's blob streams and
// the streams a tier stack hands out.
//
// Implement it only with that guarantee: NewVerifier trusts such a reader
// of the same blob instead of hashing it again.
type VerifiedReader interface {
	io.Reader
	VerifiedBlob() (d Digest, size int64)
}

// VerifiedBlob implements VerifiedReader.
func (v *Verifier) VerifiedBlob() (Digest, int64) { return v.want, v.size }

// VerifiedBlobOf returns the blob r verifies when r is a VerifiedReader,
// and "", -1 otherwise. A wrapper that passes a VerifiedReader's bytes
// through unchanged, and ends only where it does or with an error other than
// io.EOF, may implement VerifiedReader with it.
func VerifiedBlobOf(r io.Reader) (Digest, int64) {
	if vr, ok := r.(VerifiedReader); ok {
		return vr.VerifiedBlob()
	}
	return "", -1
}

// trusts reports whether r checks want (and size, when known) itself.
func trusts(r io.Reader, want Digest, size int64) bool {
	d, n := VerifiedBlobOf(r)
	return d == want && want != "" && (n == size || size < 0)
}

// Read implements io.Reader. It returns io.EOF only after the content has
// been verified completely.
func (v *Verifier) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	if v.size >= 0 {
		// Allow one byte beyond the expected size so an overlong stream is
		// seen. v.n <= v.size holds here (a Read past it failed and stuck),
		// so rem >= 0; size+1 is never computed, as size may be MaxInt64.
		if rem := v.size - v.n; int64(len(p)) > rem {
			p = p[:rem+1] // rem < len(p): no overflow
		}
	}
	n, err := v.r.Read(p)
	if n > 0 {
		if v.size >= 0 && int64(n) > v.size-v.n {
			// Overlong: these bytes are not passed on, so they are not
			// hashed either (the hash is of the bytes passed on).
			v.n += int64(n)
			v.dropped = int64(n)
			return 0, v.fail(&MismatchError{Want: v.want, WantSize: v.size, GotSize: v.n})
		}
		if v.h != nil {
			v.h.Write(p[:n])
		}
		v.n += int64(n)
	}
	if err == io.EOF {
		if verr := v.check(); verr != nil {
			return n, v.fail(verr)
		}
		v.err = io.EOF
		return n, io.EOF
	}
	if err != nil {
		if v.h == nil && errors.Is(err, ErrMismatch) {
			// The trusted reader found the mismatch: report it as ours.
			return n, v.fail(err)
		}
		v.err = err
	}
	return n, err
}

func (v *Verifier) check() error {
	if v.h == nil {
		// The trusted reader checked the digest before its io.EOF.
		if v.size >= 0 && v.n != v.size {
			return &MismatchError{Want: v.want, WantSize: v.size, GotSize: v.n}
		}
		return nil
	}
	got := NewDigestFromHash(v.h)
	if (v.size >= 0 && v.n != v.size) || got != v.want {
		return &MismatchError{Want: v.want, WantSize: v.size, Got: got, GotSize: v.n}
	}
	return nil
}

func (v *Verifier) fail(err error) error {
	v.err = err
	if v.onMismatch != nil {
		v.onMismatch(err)
	}
	return err
}

// PrefixHasher is a reader that can tell the sha256 state of the bytes it
// has yielded so far. A stream that reads a VerifiedReader and must, after
// it failed, check another copy against the bytes already delivered asks
// it instead of hashing every byte a second time.
//
// Implement it only with that guarantee, and in a wrapper only by
// forwarding to a PrefixHasher whose bytes it passes through unchanged
// (PrefixStateOf).
type PrefixHasher interface {
	// PrefixState returns a sha256 hash holding exactly the first n bytes
	// the reader has yielded so far, and n. The hash is a copy the caller
	// owns (writing to it changes nothing in the reader). It returns nil,
	// 0 when the reader cannot tell. It may be called after the reader
	// failed, not concurrently with Read.
	PrefixState() (h hash.Hash, n int64)
}

// PrefixStateOf returns r's PrefixState when r is a PrefixHasher, and
// nil, 0 otherwise.
func PrefixStateOf(r io.Reader) (hash.Hash, int64) {
	if ph, ok := r.(PrefixHasher); ok {
		return ph.PrefixState()
	}
	return nil, 0
}

// PrefixState implements PrefixHasher: the hash of the bytes passed
// through so far. A Verifier that trusts its reader (see NewVerifier)
// hashes nothing itself: it forwards the reader's PrefixState, and returns
// nil when the reader is no PrefixHasher or yielded other bytes than were
// passed on (an overlong stream).
func (v *Verifier) PrefixState() (hash.Hash, int64) {
	n := v.n - v.dropped
	if v.h == nil {
		h, in := PrefixStateOf(v.r)
		if h == nil || in != n {
			return nil, 0
		}
		return h, n
	}
	h := cloneHash(v.h)
	if h == nil {
		return nil, 0
	}
	return h, n
}

// cloneHash returns an independent copy of h, or nil when h cannot be
// copied.
func cloneHash(h hash.Hash) hash.Hash {
	if c, ok := h.(hash.Cloner); ok {
		if cl, err := c.Clone(); err == nil {
			return cl
		}
	}
	m, ok := h.(encoding.BinaryMarshaler)
	if !ok {
		return nil
	}
	state, err := m.MarshalBinary()
	if err != nil {
		return nil
	}
	out := sha256.New()
	if err := out.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
		return nil
	}
	return out
}

// Verified reports whether the whole content has been read and matched.
func (v *Verifier) Verified() bool { return v.err == io.EOF }

// N returns the number of bytes read so far.
func (v *Verifier) N() int64 { return v.n }

// Close closes the underlying reader if it is an io.Closer. It is safe to
// call more than once.
func (v *Verifier) Close() error {
	v.closeOnce.Do(func() {
		if v.c != nil {
			v.closeErr = v.c.Close()
		}
	})
	return v.closeErr
}

// NewDigestFromHash returns the digest of a sha256 hash's current state.
func NewDigestFromHash(h hash.Hash) Digest {
	return Digest(string(Algorithm) + ":" + hexOf(h.Sum(nil)))
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 2*len(b))
	for i, c := range b {
		out[2*i] = digits[c>>4]
		out[2*i+1] = digits[c&0xf]
	}
	return string(out)
}

// Copy copies src to dst through a Verifier and returns the number of bytes
// written. It succeeds only if src held exactly size bytes with digest want;
// otherwise it returns a *MismatchError (or the I/O error that stopped it).
// Tiers use it in Put to hash while writing.
func Copy(dst io.Writer, src io.Reader, want Digest, size int64) (int64, error) {
	v := NewVerifier(src, want, size, nil)
	n, err := io.Copy(dst, v)
	if err != nil {
		return n, err
	}
	return n, nil
}
