#!/usr/bin/env bash
# Strata's Quick start: starts a local registry holding a generated sample
# image (no internet needed), then uses blobctl on the default tiers (memory
# over a disk root in ${XDG_CACHE_HOME:-~/.cache}/strata) to fetch it, build
# its ext4 disk image and its overlayfs lower dirs, and show what the tiers
# hold. Run it again: the second fetch is served from the disk tier.
#
#   scripts/quickstart.sh            # as root it also mounts the overlay view
#   scripts/quickstart.sh stop       # stop the sample registry
#
# Outputs go to ${STRATA_QUICKSTART_DIR:-/tmp/strata-quickstart}.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = stop ]; then exec ./scripts/sample-registry.sh stop; fi

out=${STRATA_QUICKSTART_DIR:-/tmp/strata-quickstart}
mkdir -p "$out"
echo "== starting the sample registry on 127.0.0.1:5055"
ref=$(./scripts/sample-registry.sh | tail -n 1)
go build -o "$out/blobctl" ./cmd/blobctl

# A registry on loopback is denied by Strata's network policy unless allowed.
blobctl() {
	echo "+ blobctl --allow-cidr 127.0.0.0/8 $*" >&2
	"$out/blobctl" --allow-cidr 127.0.0.0/8 "$@"
}

echo "== fetch: every blob, the tier that served it, bytes and time"
blobctl fetch "$ref"
echo "== materialize as an ext4 disk image (rootless)"
blobctl materialize "$ref" --format ext4 --out "$out/sample.ext4"
echo "== materialize as overlayfs lower dirs (topmost layer first)"
blobctl materialize "$ref" --format overlay
if [ "$(id -u)" = 0 ]; then
	mnt="$out/mnt"
	mkdir -p "$mnt"
	mountpoint -q "$mnt" && { "$out/blobctl" unmount "$mnt" 2>/dev/null || umount "$mnt"; }
	blobctl materialize "$ref" --format overlay --mount "$mnt" >/dev/null
	echo "== the merged read-only view at $mnt:"
	ls "$mnt"
	blobctl unmount "$mnt"
fi
echo "== what the tiers hold"
blobctl du
echo "== fetch again: now served from the disk tier"
blobctl fetch "$ref"
echo
echo "Done. Try: $out/blobctl ls    $out/blobctl verify    $out/blobctl --help"
