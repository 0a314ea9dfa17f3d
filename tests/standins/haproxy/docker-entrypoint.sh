#!/bin/sh
# Entrypoint of the HAProxy stand-in, after the official image's: options alone mean haproxy
# options, and haproxy runs in the foreground in master-worker mode (-W: SIGUSR2 reloads,
# -db: no daemon), exec'd so that the stop signal reaches it.
set -e

if [ "${1#-}" != "$1" ]; then
    set -- haproxy "$@"
fi

if [ "$1" = haproxy ]; then
    shift
    set -- haproxy -W -db "$@"
fi

exec "$@"
