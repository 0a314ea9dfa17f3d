#!/usr/bin/env bash
# Build the stand-in infrastructure images the tests use where no registry is reachable:
# PostgreSQL 15, Redis 7 and HAProxy (the compose stack's load balancer) from Debian's packages,
# and MinIO's contract over moto's S3 server from PyPI, with the official images' environment
# and command contract (see tests/standins/*/Dockerfile). Idempotent; a cached rebuild takes
# seconds.
#
# Environment:
#   STANDIN_POSTGRES_IMAGE  tag for the PostgreSQL stand-in (default cc-docker/standin-postgres:15)
#   STANDIN_REDIS_IMAGE     tag for the Redis stand-in (default cc-docker/standin-redis:7)
#   STANDIN_S3_IMAGE        tag for the MinIO stand-in (default cc-docker/standin-minio:latest)
#   STANDIN_LB_IMAGE        tag for the HAProxy stand-in (default cc-docker/standin-haproxy:2.6,
#                           Debian bookworm's version)
#   EXTRA_CA_CERTS          a PEM file or bundle of CA certificates for the MinIO stand-in's
#                           pip install; copied to tests/standins/s3/ca-certificates/extra-ca.crt
#                           (gitignored)
# Extra arguments are passed to each `docker build` (e.g. --no-cache).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STANDIN_POSTGRES_IMAGE="${STANDIN_POSTGRES_IMAGE:-cc-docker/standin-postgres:15}"
STANDIN_REDIS_IMAGE="${STANDIN_REDIS_IMAGE:-cc-docker/standin-redis:7}"
STANDIN_S3_IMAGE="${STANDIN_S3_IMAGE:-cc-docker/standin-minio:latest}"
STANDIN_LB_IMAGE="${STANDIN_LB_IMAGE:-cc-docker/standin-haproxy:2.6}"
S3_CONTEXT="$REPO_ROOT/tests/standins/s3"

build_one() {
    local image=$1 context=$2
    shift 2
    local start=$SECONDS
    log "building $image from ${context#"$REPO_ROOT"/}"
    # Quiet: a cached build is not worth a screenful; errors still reach stderr.
    docker_build -q -t "$image" "$@" "$context" >/dev/null
    log "built $image $(docker image inspect -f '{{.Id}}' "$image") in $((SECONDS - start)) s"
}

# The moto version the project pins (pyproject.toml), so that the image serves what the tests
# use on the host; empty if not found (the Dockerfile's default applies).
pinned_moto_version() {
    sed -n 's/^[[:space:]]*"moto\[server\]==\([^"]*\)".*/\1/p' "$REPO_ROOT/pyproject.toml" \
        | head -n 1
}

main() {
    require_docker
    # The MinIO stand-in pip-installs from PyPI: behind a TLS-re-signing proxy it needs the CA.
    install_extra_ca_certs "$S3_CONTEXT/ca-certificates"
    # The Dockerfiles start FROM debian:bookworm-slim, which may need making first.
    "$REPO_ROOT/scripts/make-base-image.sh"
    choose_builder

    build_one "$STANDIN_POSTGRES_IMAGE" "$REPO_ROOT/tests/standins/postgres" "$@"
    build_one "$STANDIN_REDIS_IMAGE" "$REPO_ROOT/tests/standins/redis" "$@"
    build_one "$STANDIN_LB_IMAGE" "$REPO_ROOT/tests/standins/haproxy" "$@"
    local moto_version moto_args=()
    moto_version=$(pinned_moto_version)
    if [[ -n $moto_version ]]; then
        moto_args=(--build-arg "MOTO_VERSION=$moto_version")
    fi
    build_one "$STANDIN_S3_IMAGE" "$S3_CONTEXT" "${moto_args[@]}" "$@"
}

main "$@"
