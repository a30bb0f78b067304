#!/usr/bin/env bash
# Starts a local OCI registry on loopback holding Strata's generated sample
# image, so the Quick start works without internet.
#
#   scripts/sample-registry.sh            # start (idempotent) and push the sample
#   scripts/sample-registry.sh stop       # stop it
#
# The registry is Debian's docker-registry (installed if missing, as root),
# listening on ${STRATA_SAMPLE_ADDR:-127.0.0.1:5055}, with its data and PID in
# ${STRATA_SAMPLE_DIR:-/tmp/strata-sample-registry}. It prints the sample
# image reference on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
addr=${STRATA_SAMPLE_ADDR:-127.0.0.1:5055}
dir=${STRATA_SAMPLE_DIR:-/tmp/strata-sample-registry}
ref="$addr/strata/sample:latest"

stop() {
	if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
		kill "$(cat "$dir/pid")"
	fi
	rm -f "$dir/pid"
}
if [ "${1:-}" = stop ]; then stop; exit 0; fi

if ! command -v docker-registry >/dev/null; then
	if [ "$(id -u)" != 0 ]; then
		echo "sample-registry: docker-registry is not installed; run as root or: apt-get install docker-registry" >&2
		exit 1
	fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null
fi

mkdir -p "$dir/data"
if ! { [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }; then
	cat > "$dir/config.yml" <<CFG
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $dir/data}, delete: {enabled: true}}
http: {addr: $addr, secret: sample-only}
CFG
	docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
	echo $! > "$dir/pid"
	# Wait until it accepts connections (bash's /dev/tcp: no curl needed).
	up=""
	for _ in $(seq 100); do
		if (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; then up=1; break; fi
		sleep 0.1
	done
	[ -n "$up" ] || { echo "sample-registry: registry did not start; see $dir/log" >&2; exit 1; }
fi
go run ./internal/tools/mksample -ref "$ref" >&2
echo "$ref"
