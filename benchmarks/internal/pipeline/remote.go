package pipeline

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/strata-oci/strata"
	"github.com/strata-oci/strata/registry/credential"
)

// primeRemote fills the shared REAPI tier (Job.Remote) with the image and
// its derived ext4 image: an executor over it fetches the image from the
// registry (the layers are stored in every tier, the shared one included)
// and converts it (the converter stores the derived image in the shared
// tier in the background; Flush waits for that). A second executor, with
// empty local tiers, then checks that the shared tier holds the whole
// image.
func (e *env) primeRemote(ctx context.Context) error {
	x, err := e.open(ctx, filepath.Join(e.job.WorkDir, "remote-prime"), options{remote: true})
	if err != nil {
		return err
	}
	defer x.Close()
	img, err := fetchAll(ctx, x.Fetcher(), e.ref)
	if err != nil {
		return err
	}
	if _, err := x.Ext4().Materialize(ctx, img, nil); err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := x.Ext4().Flush(fctx); err != nil {
		return err
	}
	if st := x.Ext4().Stats(); st.BackgroundStores != 1 || st.BackgroundStoreFailures != 0 {
		return fmt.Errorf("the derived image's store into the shared tier: %d stores, %d failed (want 1, 0)", st.BackgroundStores, st.BackgroundStoreFailures)
	}
	if err := waitCached(ctx, x.Fetcher(), e.ref); err != nil {
		return err
	}
	if err := x.Close(); err != nil {
		return err
	}
	y, err := e.open(ctx, filepath.Join(e.job.WorkDir, "remote-check"), options{remote: true})
	if err != nil {
		return err
	}
	err = waitCached(ctx, y.Fetcher(), e.ref)
	if err == nil {
		err = sharedDerived(ctx, y, e.ref)
	}
	if cerr := y.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("an executor with empty local tiers over the shared tier: %w", err)
	}
	return nil
}

// sharedDerived checks that x, whose local tiers hold no derived image,
// finds the image's derivation ref and derived blob (in the shared tier):
// a Put the disk tier took succeeds though the shared tier failed it.
func sharedDerived(ctx context.Context, x *strata.Host, ref string) error {
	img, err := x.Fetcher().FetchImage(ctx, ref, credential.Anonymous)
	if err != nil {
		return err
	}
	ok, err := x.Ext4().IsMaterialized(ctx, img, nil)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("the shared tier does not hold the derived ext4 image (its ref or its blob)")
	}
	return nil
}

// fetchReapiHit is fetch-cold's work by an executor whose local tiers are
// empty, over the primed shared tier. Every blob must come from the shared
// tier: a registry GET of a blob fails the job. The registry is still asked
// for the tag and manifest when the shared tier's refs do not answer (the
// note says how many requests were made).
func (e *env) fetchReapiHit(ctx context.Context) error {
	x, err := e.open(ctx, filepath.Join(e.job.WorkDir, "tiers"), options{remote: true})
	if err != nil {
		return err
	}
	defer x.Close()
	t0 := time.Now()
	if _, err := fetchAll(ctx, x.Fetcher(), e.ref); err != nil {
		return err
	}
	e.add(FetchReapiHit, time.Since(t0))
	if g := e.px.BlobGets(); len(g) != 0 {
		return fmt.Errorf("a cache hit from the shared tier downloaded %d blobs from the registry: %v", len(g), g)
	}
	e.out.Note = fmt.Sprintf("registry requests (tag, manifests, proofs): %d; blob GETs: 0", e.px.Requests())
	return nil
}

// ext4ReapiDownload is ext4's Materialize (timed alone, after an untimed
// FetchImage) by an executor whose local tiers are empty, over the primed
// shared tier: the derived image is downloaded, not converted (checked).
func (e *env) ext4ReapiDownload(ctx context.Context) error {
	x, err := e.open(ctx, filepath.Join(e.job.WorkDir, "tiers"), options{remote: true})
	if err != nil {
		return err
	}
	defer x.Close()
	img, err := x.Fetcher().FetchImage(ctx, e.ref, credential.Anonymous)
	if err != nil {
		return err
	}
	t0 := time.Now()
	res, err := x.Ext4().Materialize(ctx, img, nil)
	if err != nil {
		return err
	}
	e.add(Ext4ReapiDownload, time.Since(t0))
	st := x.Ext4().Stats()
	if !res.FromCache || st.Downloads != 1 || st.Conversions != 0 {
		return fmt.Errorf("the derived image was not downloaded from the shared tier (from cache %v, %d downloads, %d conversions)", res.FromCache, st.Downloads, st.Conversions)
	}
	if g := e.px.BlobGets(); len(g) != 0 {
		return errors.New("the derived image's download made registry blob GETs")
	}
	e.out.Note = fmt.Sprintf("image %d bytes", res.Size)
	return nil
}
