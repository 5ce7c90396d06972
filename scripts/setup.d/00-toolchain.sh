#!/usr/bin/env bash
# Build prerequisites for the crates that compile C (libgit2, sqlite, openssl).
set -euo pipefail
need=()
for pkg in pkg-config libssl-dev gcc; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
