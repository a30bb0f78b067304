#!/usr/bin/env bash
# Runs Strata's whole test suite. On a fresh Debian machine with Go it first
# installs the real components the tests use (see docs and ../shared/RIG.md).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v e2fsck >/dev/null || need+=(e2fsprogs)
command -v getfattr >/dev/null || need+=(attr)
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ]; then
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
	else
		echo "test.sh: missing ${need[*]}; tests that need them will skip (run as root to install)" >&2
	fi
fi

go vet ./...
go test -count=1 -timeout 30m ./... "$@"
