#!/bin/bash
# Entry point of the lab's stand-in image 10.77.0.1:5000/standin/valkey:8 (redis-server 7.0 from
# Debian bookworm, which speaks the same protocol; the official image cannot be pulled offline).
# Like the official image: `valkey-server` runs as an unprivileged user with data in /data,
# protected mode off (the container network is the boundary); arguments starting with `-` or a
# *.conf file are passed to valkey-server; `valkey-cli` is redis-cli.
set -Eeuo pipefail

if [ "${1:0:1}" = - ] || [[ "$1" == *.conf ]]; then
    set -- valkey-server "$@"
fi

if [ "$1" = valkey-server ] || [ "$1" = redis-server ]; then
    shift
    conf=()
    if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
        conf=("$1")
        shift
    fi
    if [ "$(id -u)" = 0 ]; then
        mkdir -p /data
        chown -R redis:redis /data
        exec setpriv --reuid=redis --regid=redis --init-groups \
            redis-server "${conf[@]}" --protected-mode no --dir /data "$@"
    fi
    exec redis-server "${conf[@]}" --protected-mode no --dir /data "$@"
fi

exec "$@"
