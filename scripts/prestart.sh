#!/bin/sh
# The gateway container's entrypoint: make sure a JWT secret exists, apply the database
# migrations (waiting for PostgreSQL), say how to mint a token, then run the command (serve).
set -eu

if [ -z "${JWT_SECRET:-}" ]; then
    secret_file="${JWT_SECRET_FILE:-/var/lib/cc-docker/jwt-secret}"
    if [ ! -s "$secret_file" ]; then
        mkdir -p "$(dirname "$secret_file")"
        umask 077
        python -c 'import secrets; print(secrets.token_urlsafe(48))' >"$secret_file"
        echo "prestart: generated a JWT secret in $secret_file (kept in the volume)"
    fi
    export JWT_SECRET_FILE="$secret_file"
fi

attempt=1
until python -m gateway migrate; do
    if [ "$attempt" -ge 30 ]; then
        echo "prestart: the database migrations failed 30 times; giving up" >&2
        exit 1
    fi
    echo "prestart: database not ready (attempt $attempt); retrying in 2 s" >&2
    attempt=$((attempt + 1))
    sleep 2
done

echo "prestart: migrations applied. Mint a user token with:"
echo "  docker compose exec gateway python -m gateway token --sub <your name>"
exec "$@"
