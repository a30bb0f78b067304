package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/internal/admin"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/registry/credential"
)

// requestedPlatform is the platform this blobctl asks for: --platform (or
// the config's platform), else this machine's.
func (a *app) requestedPlatform() manifest.Platform {
	if a.cfg.Platform != "" {
		if p, err := manifest.ParsePlatform(a.cfg.Platform); err == nil {
			return p
		}
	}
	return manifest.Default()
}

// warnPlatform warns on stderr when ref's image, built for have (as
// admin.ImagePlatform states it), is not for the requested platform: a
// reference to a single-platform manifest is served whatever --platform
// says, and an index may offer only a compatible lower variant.
func (a *app) warnPlatform(ref, have string, fromIndex bool) {
	want := a.requestedPlatform()
	if have == "unknown" {
		return // the config states none: nothing to compare
	}
	hp, err := manifest.ParsePlatform(have)
	if err != nil {
		return
	}
	want.OSVersion, want.OSFeatures, want.Features = "", nil, nil
	if manifest.Match(want, hp) {
		return
	}
	why := "the reference names a single-platform image, not a multi-platform index"
	if fromIndex {
		why = "the closest its index offers"
	}
	fmt.Fprintf(a.stderr, "blobctl: warning: %s is built for %s, not for the requested %s (%s); it may not run there\n", ref, have, want, why)
}

// checkPlatform is warnPlatform for a fetched image.
func (a *app) checkPlatform(img *fetcher.Image) {
	a.warnPlatform(img.Reference.String(), admin.ImagePlatform(img), img.Index != "")
}

// imagePlatform is the platform img's config states (admin.ImagePlatform).
func imagePlatform(img *fetcher.Image) string { return admin.ImagePlatform(img) }

// platformAll is the --platform value that makes fetch fetch every
// platform of an index.
const platformAll = "all"

// indexOffer finds the index digest in a no-matching-platform error.
var indexOffer = regexp.MustCompile(`index (sha256:[0-9a-f]{64}) offers`)

// fetchAll fetches every platform image of ref's index (one Warm per
// platform manifest, by digest), or ref alone when it names a
// single-platform image. first is the Warm of ref itself with the default
// platform, and its error.
func (a *app) fetchAll(ctx context.Context, w warmer, adm admin.Admin, ref string, cred credential.Credential, parallel int, first *fetchResult, ferr error) ([]*fetchResult, error) {
	var index blob.Digest
	switch {
	case ferr == nil && first.Index == "":
		return []*fetchResult{first}, nil // a single-platform image
	case ferr == nil:
		index = blob.Digest(first.Index)
	case errors.Is(ferr, manifest.ErrNoMatchingPlatform):
		m := indexOffer.FindStringSubmatch(ferr.Error())
		if m == nil {
			return nil, ferr
		}
		index = blob.Digest(m[1])
	default:
		return nil, ferr
	}
	r, err := registry.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := adm.Cat(ctx, index, &buf); err != nil {
		return nil, fmt.Errorf("read the index of %s: %w", ref, err)
	}
	ix, err := manifest.ParseIndex("", buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("the index of %s: %w", ref, err)
	}
	var out []*fetchResult
	for _, d := range ix.Manifests {
		if d.Platform == nil || d.Platform.OS == "" || d.Platform.OS == "unknown" || !manifest.IsManifest(d.MediaType) || d.Annotations[manifest.AnnotationReferenceType] != "" {
			continue // attestations and other non-image entries
		}
		if ferr == nil && d.Digest.String() == first.Digest {
			out = append(out, first)
			continue
		}
		dr, err := r.Repo().Digest(d.Digest)
		if err != nil {
			return out, err
		}
		res, err := a.fetch(ctx, w, dr.String(), cred, parallel)
		if err != nil {
			return out, fmt.Errorf("%s (%s): %w", ref, d.Platform.Normalize(), err)
		}
		res.Reference, res.Index = ref, index.String()
		out = append(out, res)
	}
	return out, nil
}

// printFetchAll prints what fetchAll fetched: a JSON list, or one summary
// per platform.
func (a *app) printFetchAll(results []*fetchResult, err error) error {
	if err != nil {
		return err
	}
	if a.json {
		return a.printJSON(results)
	}
	for _, r := range results {
		printFetch(a.stdout, r)
	}
	return nil
}
