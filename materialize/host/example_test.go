package host_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata/materialize/host"
	"github.com/strata-oci/strata/registry/credential"
)

// Open a host on the default tiers, fetch an image and build its ext4 disk
// image. (The README shows this code.)
func Example() {
	ctx := context.Background()
	cfg := host.Default() // memory 256 MiB over disk in ~/.cache/strata
	cfg.Disk.Budget = 20 << 30

	reg := prometheus.NewRegistry()
	h, err := host.Open(ctx, cfg, reg)
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
