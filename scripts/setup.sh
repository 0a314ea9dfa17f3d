#!/usr/bin/env bash
# Bring the whole stack up with Docker Compose (README: "bring the service up"):
#
#   scripts/setup.sh              build the images, start everything, print the URLs and a token
#   scripts/setup.sh token NAME   print a user token for NAME
#   scripts/setup.sh down [-v]    stop the stack (and its sessions); -v also deletes the data
#
# Environment: every variable of .env.example (a .env file is read too); GATEWAY_REPLICAS
# gateways run behind the load balancer. Where the official infrastructure images cannot be
# pulled (an offline site), POSTGRES_IMAGE, REDIS_IMAGE, MINIO_IMAGE and LB_IMAGE fall back to
# stand-ins built locally from Debian's packages and PyPI.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose "$@"
    elif command -v docker-compose >/dev/null 2>&1; then
        docker-compose "$@"
    else
        die "Docker Compose is missing: install the compose plugin (or docker-compose)"
    fi
}

# Read .env the way compose does, so this script and compose agree on ports and names.
load_env() {
    if [[ -f $REPO_ROOT/.env ]]; then
        set -a
        # shellcheck disable=SC1091
        source "$REPO_ROOT/.env"
        set +a
    fi
}

# The official image when it is present or can be pulled, else the local stand-in.
pick_image() {
    local variable=$1 official=$2 standin=$3
    if [[ -n ${!variable:-} ]]; then
        return
    fi
    if docker image inspect "$official" >/dev/null 2>&1 \
        || timeout "${PULL_TIMEOUT:-60}" docker pull -q "$official" >/dev/null 2>&1; then
        export "$variable=$official"
        return
    fi
    log "$official cannot be pulled here; using the stand-in $standin"
    export "$variable=$standin"
    NEED_STANDINS=1
}

wait_ready() {
    local url=$1
    for _ in $(seq 120); do
        if curl -fsS "$url" >/dev/null 2>&1; then
            return
        fi
        sleep 1
    done
    compose logs --tail 50 gateway lb >&2 || true
    die "the gateway did not become ready at $url"
}

up() {
    require_docker
    "$REPO_ROOT/scripts/make-base-image.sh"
    install_extra_ca_certs "$REPO_ROOT/container/ca-certificates"
    choose_builder
    NEED_STANDINS=0
    pick_image POSTGRES_IMAGE postgres:15 "${STANDIN_POSTGRES_IMAGE:-cc-docker/standin-postgres:15}"
    pick_image REDIS_IMAGE redis:7 "${STANDIN_REDIS_IMAGE:-cc-docker/standin-redis:7}"
    pick_image MINIO_IMAGE minio/minio:latest "${STANDIN_S3_IMAGE:-cc-docker/standin-minio:latest}"
    pick_image LB_IMAGE haproxy:2.8 "${STANDIN_LB_IMAGE:-cc-docker/standin-haproxy:2.6}"
    if [[ $NEED_STANDINS == 1 ]]; then
        "$REPO_ROOT/scripts/build-standins.sh"
    fi
    log "building the gateway and session images"
    compose build
    compose up -d --scale gateway="${GATEWAY_REPLICAS:-1}"
    local port=${GATEWAY_PORT:-8000}
    wait_ready "http://127.0.0.1:$port/ready"
    cat <<MSG

CC-Docker is up.
  API:            http://localhost:$port   (interactive docs: http://localhost:$port/docs)
  Gateways:       ${GATEWAY_REPLICAS:-1} behind the load balancer (more: GATEWAY_REPLICAS=N scripts/setup.sh)
  Web console:    http://localhost:$port/console   (sign in with the token below)
  Metrics:        http://localhost:$port/metrics   (Prometheus; METRICS_TOKEN protects it)
  MinIO console:  http://localhost:${MINIO_CONSOLE_PORT:-9001}   (user ${MINIO_ROOT_USER:-ccd-minio})
  Model access:   set ANTHROPIC_API_KEY (or CLAUDE_CODE_OAUTH_TOKEN) in .env, then run this again.

A token for user '${CCD_USER:-${USER:-demo}}' (more: scripts/setup.sh token NAME):
MSG
    token "${CCD_USER:-${USER:-demo}}"
}

token() {
    # Any replica will do (they share the secret); --index picks one when there are several.
    compose exec -T --index 1 gateway python -m gateway token --sub "${1:?usage: setup.sh token NAME}"
}

down() {
    # Session containers are the gateway's, not compose's: remove them first, or the sessions
    # network cannot go; the gateways stop first, so that no pooled container is started after.
    local instance=${INSTANCE_NAME:-compose}
    local ids
    compose stop gateway >/dev/null 2>&1 || true
    ids=$(docker ps -aq --filter "label=cc-docker.instance=$instance")
    if [[ -n $ids ]]; then
        log "removing the stack's session containers"
        # shellcheck disable=SC2086
        docker rm -f -v $ids >/dev/null  # -v: their workspace volumes go with them
    fi
    compose down --remove-orphans "$@"
}

main() {
    cd "$REPO_ROOT"
    load_env
    case "${1:-up}" in
        up) up ;;
        token) token "${2:-}" ;;
        down) shift; down "$@" ;;
        *) die "usage: scripts/setup.sh [up | token NAME | down [-v]]" ;;
    esac
}

main "$@"
