package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/registry/credential"
)

// FetchRecord is one blob of a warmed image and where it came from.
type FetchRecord struct {
	Kind      string  `json:"kind"` // index, manifest, config or layer
	Digest    string  `json:"digest"`
	MediaType string  `json:"media_type,omitempty"`
	Source    string  `json:"source"` // the tier that served it, or "registry"
	Bytes     int64   `json:"bytes"`
	Seconds   float64 `json:"seconds,omitempty"`
}

// FetchResult is what Warm did.
type FetchResult struct {
	Reference string        `json:"reference"`
	Digest    string        `json:"digest"`
	Index     string        `json:"index,omitempty"`
	Platform  string        `json:"platform"` // the image's, see ImagePlatform
	FromCache bool          `json:"from_cache"`
	Blobs     []FetchRecord `json:"blobs"`
	Bytes     int64         `json:"bytes"`
	Seconds   float64       `json:"seconds"`
}

// WarmHooks let a caller watch Warm (progress bars). Both may be nil; they
// are called from several goroutines at once.
type WarmHooks struct {
	// Documents is called once with the records of the index, manifest and
	// config, before any layer is read.
	Documents func([]FetchRecord)
	// Reader wraps the reader of a layer served by source (for progress).
	Reader func(l *fetcher.Layer, source string, r io.Reader) io.Reader
	// Layer is called when a layer has been read, or failed.
	Layer func(l *fetcher.Layer, rec FetchRecord, err error)
}

// ImagePlatform is the platform img is built for, as its config states it
// (normalized, "os/arch[/variant]"), or "unknown" when the config states no
// os and architecture. It is the image's, not the one requested: a
// reference to a single-platform manifest is served whatever was asked.
func ImagePlatform(img *fetcher.Image) string {
	p := img.Config.Platform
	if p.OS == "" || p.Architecture == "" {
		return "unknown"
	}
	return p.Normalize().String()
}

// Warm fetches ref for cred and reads every layer to the end, verified, at
// most parallel at once, so that the whole image is in the local tiers
// afterwards. It reports the tier each blob came from.
func (h *Host) Warm(ctx context.Context, ref string, cred credential.Credential, parallel int, hooks *WarmHooks) (*FetchResult, error) {
	if hooks == nil {
		hooks = &WarmHooks{}
	}
	start := time.Now()
	img, err := h.fetcher.FetchImage(ctx, ref, cred)
	if err != nil {
		return nil, err
	}
	res := &FetchResult{Reference: img.Reference.String(), Digest: img.Digest.String(), Platform: ImagePlatform(img), FromCache: img.FromCache}
	if img.Index != "" {
		res.Index = img.Index.String()
		var size int64
		if info, err := h.stack.Stat(ctx, img.Index); err == nil {
			size = info.Size
		}
		res.Blobs = append(res.Blobs, FetchRecord{Kind: "index", Digest: img.Index.String(), Source: img.Sources[img.Index], Bytes: size})
	}
	cd := img.Manifest.Config
	res.Blobs = append(res.Blobs,
		FetchRecord{Kind: "manifest", Digest: img.Digest.String(), MediaType: string(img.Manifest.MediaType), Source: img.Sources[img.Digest], Bytes: img.Manifest.Size()},
		FetchRecord{Kind: "config", Digest: cd.Digest.String(), MediaType: string(cd.MediaType), Source: img.Sources[cd.Digest], Bytes: cd.Size})
	if hooks.Documents != nil {
		hooks.Documents(res.Blobs)
	}
	layers := img.Layers()
	recs := make([]FetchRecord, len(layers))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(parallel, 1))
	for i, l := range layers {
		g.Go(func() error {
			rec, err := warmLayer(gctx, l, hooks)
			if hooks.Layer != nil {
				hooks.Layer(l, rec, err)
			}
			recs[i] = rec
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	res.Blobs = append(res.Blobs, recs...)
	for _, b := range res.Blobs {
		res.Bytes += b.Bytes
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// warmLayer reads layer l whole. A read that delivered wrong bytes (a
// corrupt copy found out only at the end: the stack has marked it and
// skips it now) is read once more.
func warmLayer(ctx context.Context, l *fetcher.Layer, hooks *WarmHooks) (FetchRecord, error) {
	rec, err := warmLayerOnce(ctx, l, hooks)
	if errors.Is(err, blob.ErrMismatch) && ctx.Err() == nil {
		rec, err = warmLayerOnce(ctx, l, hooks)
	}
	return rec, err
}

func warmLayerOnce(ctx context.Context, l *fetcher.Layer, hooks *WarmHooks) (FetchRecord, error) {
	start := time.Now()
	rc, info, err := l.OpenInfo(ctx)
	if err != nil {
		return FetchRecord{}, fmt.Errorf("layer %s: %w", l.Digest(), err)
	}
	defer rc.Close()
	var r io.Reader = rc
	if hooks.Reader != nil {
		r = hooks.Reader(l, info.Tier, rc)
	}
	n, err := blob.Copy(io.Discard, r, l.Digest(), l.Size())
	if err != nil {
		return FetchRecord{}, fmt.Errorf("layer %s from %s: %w", l.Digest(), info.Tier, err)
	}
	return FetchRecord{Kind: "layer", Digest: l.Digest().String(), MediaType: l.MediaType(), Source: info.Tier, Bytes: n, Seconds: time.Since(start).Seconds()}, nil
}

// warmRequest is the admin endpoint's /v1/warm body. The credential travels
// only over the owner-only socket and is never echoed.
type warmRequest struct {
	Image         string `json:"image"`
	Parallel      int    `json:"parallel,omitempty"`
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	IdentityToken string `json:"identity_token,omitempty"`
	RegistryToken string `json:"registry_token,omitempty"`
}

func (w warmRequest) credential() (credential.Credential, error) {
	if w.Username == "" && w.Password == "" && w.IdentityToken == "" && w.RegistryToken == "" {
		return credential.Anonymous, nil
	}
	switch {
	case w.RegistryToken != "":
		return credential.RegistryToken("", w.RegistryToken), nil
	case w.IdentityToken != "":
		return credential.IdentityToken("", w.Username, w.IdentityToken), nil
	}
	return credential.Basic("", w.Username, w.Password), nil
}

// Warm asks the holder of the root to warm ref (see Host.Warm). Hooks are
// called after the holder answered: Documents once, then Layer per layer.
func (c *Client) Warm(ctx context.Context, ref string, cred credential.Credential, parallel int, hooks *WarmHooks) (*FetchResult, error) {
	req := warmRequest{Image: ref, Parallel: parallel}
	if !cred.IsAnonymous() {
		ac, err := cred.Authenticator().Authorization()
		if err != nil {
			return nil, fmt.Errorf("credential: %w", err)
		}
		req.Username, req.Password, req.IdentityToken, req.RegistryToken = ac.Username, ac.Password, ac.IdentityToken, ac.RegistryToken
	}
	var res FetchResult
	if err := c.do(ctx, "POST", "/v1/warm", req, &res); err != nil {
		return nil, err
	}
	if hooks != nil {
		var docs []FetchRecord
		for _, b := range res.Blobs {
			if b.Kind != "layer" {
				docs = append(docs, b)
			}
		}
		if hooks.Documents != nil {
			hooks.Documents(docs)
		}
		if hooks.Layer != nil {
			for _, b := range res.Blobs {
				if b.Kind == "layer" {
					hooks.Layer(nil, b, nil)
				}
			}
		}
	}
	return &res, nil
}
