#!/bin/sh
# Entrypoint of the MinIO stand-in, after the official image's: a command that does not
# start with `minio` is minio's arguments (`docker run IMAGE server /data` runs
# `minio server /data`), and exec makes the server PID 1 so that `docker stop`'s SIGTERM
# reaches it. The image already runs as a non-root user, so there is no user switching.
set -eu

if [ "$#" -gt 0 ] && [ "$1" != "minio" ]; then
    set -- minio "$@"
fi

exec "$@"
