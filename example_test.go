package strata_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata"
	"github.com/strata-oci/strata/registry/credential"
)

// Open a host on the default tiers, fetch an image and build its ext4 disk
// image. (The README shows this code.)
func Example() {
	ctx := context.Background()
	cfg := strata.Default() // memory 256 MiB over disk in ~/.cache/strata
	cfg.DiskBudget = 20 << 30
	cfg.Metrics = prometheus.NewRegistry()

	h, err := strata.Open(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close()

	img, err := h.Fetcher().FetchImage(ctx, "docker.io/library/alpine:3.20", credential.Anonymous)
	if err != nil {
		log.Fatal(err)
	}
	disk, err := h.Ext4().Materialize(ctx, img, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintln(os.Stderr, "ext4 image:", disk.Path, disk.Size)

	lower, err := h.Overlay().Materialize(ctx, img)
	if err != nil {
		log.Fatal(err)
	}
	defer lower.Lease.Release()
	fmt.Fprintln(os.Stderr, "overlay lowerdir:", lower.LowerDirs)
}
