#!/bin/sh
# The gateway container's entrypoint: make sure a JWT secret exists, apply the database
# migrations (waiting for PostgreSQL), say how to mint a token, then run the command (serve).
# Any number of replicas may run it at once: they agree on one secret (an atomic create) and
# the migrations run once, under a database lock (gateway/db/migrate.py).
set -eu

if [ -z "${JWT_SECRET:-}" ]; then
    secret_file="${JWT_SECRET_FILE:-/var/lib/cc-docker/jwt-secret}"
    if [ ! -e "$secret_file" ]; then
        mkdir -p "$(dirname "$secret_file")"
        umask 077
        # Replicas starting together on one volume race here: each writes a candidate, and
        # link(2) gives it the final name only if that name does not exist yet, so exactly one
        # candidate becomes the secret and every replica reads that one.
        candidate=$(mktemp "$secret_file.XXXXXX")
        python -c 'import secrets; print(secrets.token_urlsafe(48))' >"$candidate"
        if ln "$candidate" "$secret_file" 2>/dev/null; then
            echo "prestart: generated a JWT secret in $secret_file (kept in the volume)"
        fi
        rm -f "$candidate"
    fi
    if [ ! -s "$secret_file" ]; then
        echo "prestart: no JWT secret in $secret_file: delete it (one is generated) or set JWT_SECRET" >&2
        exit 1
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
echo "  scripts/setup.sh token <your name>   (or: docker compose exec --index 1 gateway python -m gateway token --sub <your name>)"
exec "$@"
