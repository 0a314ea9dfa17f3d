#!/usr/bin/env bash
# Entrypoint of the Redis stand-in, after the official image's: options alone mean
# redis-server options, the server runs as the redis user, and exec keeps it PID 1 so that
# `docker stop`'s SIGTERM reaches it.
set -euo pipefail

# `docker run IMAGE --appendonly yes` or `docker run IMAGE /path/redis.conf`.
if [[ ${1:-} == -* || ${1:-} == *.conf ]]; then
    set -- redis-server "$@"
fi

if [[ ${1:-} == redis-server ]]; then
    # The official binary defaults to protected mode off; Debian's to on, which refuses every
    # client from another host. Match the official default unless the command line or a
    # config file may decide.
    decided=0
    for arg in "$@"; do
        if [[ $arg == --protected-mode || $arg == *.conf ]]; then
            decided=1
        fi
    done
    if [[ $decided == 0 ]]; then
        set -- "$@" --protected-mode no
    fi

    if [[ $(id -u) == 0 ]]; then
        # /data may be a fresh volume owned by root.
        find . \! -user redis -exec chown redis '{}' +
        # setpriv comes with util-linux, so no gosu is needed.
        exec setpriv --reuid=redis --regid=redis --init-groups "$@"
    fi
fi

exec "$@"
