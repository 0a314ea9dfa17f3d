#!/usr/bin/env bash
# Build the stand-in infrastructure images the tests use where no registry is reachable:
# PostgreSQL 15 and Redis 7 from Debian's packages, with the official images' environment
# contract (see tests/standins/*/Dockerfile). Idempotent; a cached rebuild takes seconds.
#
# Environment:
#   STANDIN_POSTGRES_IMAGE  tag for the PostgreSQL stand-in (default cc-docker/standin-postgres:15)
#   STANDIN_REDIS_IMAGE     tag for the Redis stand-in (default cc-docker/standin-redis:7)
# Extra arguments are passed to each `docker build` (e.g. --no-cache).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STANDIN_POSTGRES_IMAGE="${STANDIN_POSTGRES_IMAGE:-cc-docker/standin-postgres:15}"
STANDIN_REDIS_IMAGE="${STANDIN_REDIS_IMAGE:-cc-docker/standin-redis:7}"

build_one() {
    local image=$1 context=$2
    shift 2
    local start=$SECONDS
    log "building $image from ${context#"$REPO_ROOT"/}"
    # Quiet: a cached build is not worth a screenful; errors still reach stderr.
    docker_build -q -t "$image" "$@" "$context" >/dev/null
    log "built $image $(docker image inspect -f '{{.Id}}' "$image") in $((SECONDS - start)) s"
}

main() {
    require_docker
    # Both Dockerfiles start FROM debian:bookworm-slim, which may need making first.
    "$REPO_ROOT/scripts/make-base-image.sh"
    choose_builder

    build_one "$STANDIN_POSTGRES_IMAGE" "$REPO_ROOT/tests/standins/postgres" "$@"
    build_one "$STANDIN_REDIS_IMAGE" "$REPO_ROOT/tests/standins/redis" "$@"
}

main "$@"
