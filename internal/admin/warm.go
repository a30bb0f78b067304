package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
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

// WarmHooks let a caller watch Warm (progress bars). Any may be nil; Local
// calls them from several goroutines at once, Client from one.
type WarmHooks struct {
	// Documents is called once with the records of the index, manifest and
	// config, before any layer is read.
	Documents func([]FetchRecord)
	// Reader wraps the reader of layer d (size bytes) served by source, for
	// progress; it is called again if the layer is read again. Through a
	// Client, the reader it wraps yields zero bytes as the holder of the
	// root reads the layer (only the counts are real), then io.EOF.
	Reader func(d blob.Digest, size int64, source string, r io.Reader) io.Reader
	// Layer is called when a layer has been read, or failed. Through a
	// Client, l is nil.
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
func (l *Local) Warm(ctx context.Context, ref string, cred credential.Credential, parallel int, hooks *WarmHooks) (*FetchResult, error) {
	if hooks == nil {
		hooks = &WarmHooks{}
	}
	start := time.Now()
	img, err := l.p.Fetcher.FetchImage(ctx, ref, cred)
	if err != nil {
		return nil, err
	}
	res := &FetchResult{Reference: img.Reference.String(), Digest: img.Digest().String(), Platform: ImagePlatform(img), FromCache: img.FromCache}
	if img.Index != "" {
		res.Index = img.Index.String()
		var size int64
		if info, err := l.p.Stack.Stat(ctx, img.Index); err == nil {
			size = info.Size
		}
		res.Blobs = append(res.Blobs, FetchRecord{Kind: "index", Digest: img.Index.String(), Source: img.Sources[img.Index], Bytes: size})
	}
	cd := img.Manifest.Config
	res.Blobs = append(res.Blobs,
		FetchRecord{Kind: "manifest", Digest: img.Digest().String(), MediaType: string(img.Manifest.MediaType), Source: img.Sources[img.Digest()], Bytes: img.Manifest.Size()},
		FetchRecord{Kind: "config", Digest: cd.Digest.String(), MediaType: string(cd.MediaType), Source: img.Sources[cd.Digest], Bytes: cd.Size})
	if hooks.Documents != nil {
		hooks.Documents(res.Blobs)
	}
	layers := img.Layers()
	recs := make([]FetchRecord, len(layers))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(parallel, 1))
	for i, layer := range layers {
		g.Go(func() error {
			fl := layer.(*fetcher.Layer) // what fetcher.Image.Layers holds
			rec, err := warmLayer(gctx, fl, hooks)
			if hooks.Layer != nil {
				hooks.Layer(fl, rec, err)
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
		r = hooks.Reader(l.Digest(), l.Size(), info.Tier, rc)
	}
	n, err := blob.Copy(io.Discard, r, l.Digest(), l.Size())
	if err != nil {
		return FetchRecord{}, fmt.Errorf("layer %s from %s: %w", l.Digest(), info.Tier, err)
	}
	return FetchRecord{Kind: "layer", Digest: l.Digest().String(), MediaType: string(l.MediaType()), Source: info.Tier, Bytes: n, Seconds: time.Since(start).Seconds()}, nil
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

// Warm asks the holder of the root to warm ref (see Local.Warm), and calls
// hooks as the holder reports its progress. A holder that does not report
// progress (an older version) answers only at the end: then Documents is
// called once and Layer per layer, after the fact, and Reader never.
func (c *Client) Warm(ctx context.Context, ref string, cred credential.Credential, parallel int, hooks *WarmHooks) (*FetchResult, error) {
	req := warmRequest{Image: ref, Parallel: parallel}
	if !cred.IsAnonymous() {
		ac, err := cred.Authenticator().Authorization()
		if err != nil {
			return nil, fmt.Errorf("credential: %w", err)
		}
		req.Username, req.Password, req.IdentityToken, req.RegistryToken = ac.Username, ac.Password, ac.IdentityToken, ac.RegistryToken
	}
	resp, err := c.sendAccept(ctx, http.MethodPost, "/v1/warm", req, warmEventsType)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if t, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); t == warmEventsType {
		res, err := readWarmEvents(resp.Body, hooks)
		var re *remoteError
		if err != nil && !errors.As(err, &re) {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("admin endpoint of %s: %w", c.root, ctx.Err())
			}
			return nil, fmt.Errorf("admin endpoint of %s: %w: %v", c.root, blob.ErrUnavailable, err)
		}
		return res, err
	}
	var res FetchResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return nil, fmt.Errorf("admin endpoint /v1/warm: bad answer: %w", err)
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
