#!/usr/bin/env bash
# Bring the service up on this machine (README: "bring the service up"): PostgreSQL and Redis in
# containers on a docker network of their own, the session image, then the gateway itself in
# the foreground on http://127.0.0.1:${PORT:-8000}. Ctrl-C stops the gateway; the stores keep
# running (and keep their data in volumes) until `scripts/serve.sh down`.
#
# Environment (besides every gateway setting, see .env.example):
#   POSTGRES_IMAGE, REDIS_IMAGE  store images (default postgres:15 and redis:7; where they cannot
#                                be pulled, local stand-ins are built from Debian's packages)
#   POSTGRES_PORT, REDIS_PORT    host ports the stores are published on, on 127.0.0.1
#                                (default 55432 and 56379)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NETWORK=ccd
POSTGRES_PORT="${POSTGRES_PORT:-55432}"
REDIS_PORT="${REDIS_PORT:-56379}"
STATE_DIR="$REPO_ROOT/.cc-docker"

# An image that is present, or can be pulled; else the stand-in (built on first use).
store_image() {
    local wanted=$1 standin=$2
    if docker image inspect "$wanted" >/dev/null 2>&1 || docker pull -q "$wanted" >/dev/null 2>&1; then
        printf '%s\n' "$wanted"
        return
    fi
    log "$wanted cannot be pulled here; using the local stand-in $standin"
    docker image inspect "$standin" >/dev/null 2>&1 || "$REPO_ROOT/scripts/build-standins.sh" >&2
    printf '%s\n' "$standin"
}

ensure_container() {
    local name=$1
    shift
    if [[ $(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null) == true ]]; then
        return
    fi
    docker rm -f "$name" >/dev/null 2>&1 || true
    docker run -d --name "$name" --network "$NETWORK" --restart unless-stopped "$@" >/dev/null
    log "started $name"
}

wait_for() {
    local what=$1
    shift
    for _ in $(seq 60); do
        "$@" >/dev/null 2>&1 && return
        sleep 1
    done
    die "$what did not become ready"
}

down() {
    docker rm -f ccd-postgres ccd-redis >/dev/null 2>&1 || true
    docker network rm "$NETWORK" >/dev/null 2>&1 || true
    log "stopped the stores (their volumes ccd-postgres and ccd-redis are kept)"
}

main() {
    cd "$REPO_ROOT"
    if [[ ${1:-} == down ]]; then
        down
        return
    fi
    require_docker
    [[ -x .venv/bin/python ]] || "${PYTHON:-python3}" -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[gateway]'
    "$REPO_ROOT/scripts/build-container.sh"

    docker network inspect "$NETWORK" >/dev/null 2>&1 || docker network create "$NETWORK" >/dev/null
    local postgres redis
    postgres=$(store_image "${POSTGRES_IMAGE:-postgres:15}" cc-docker/standin-postgres:15)
    redis=$(store_image "${REDIS_IMAGE:-redis:7}" cc-docker/standin-redis:7)
    ensure_container ccd-postgres -e POSTGRES_USER=ccd -e POSTGRES_PASSWORD=ccd \
        -e POSTGRES_DB=ccd -v ccd-postgres:/var/lib/postgresql/data \
        -p "127.0.0.1:$POSTGRES_PORT:5432" "$postgres"
    ensure_container ccd-redis -v ccd-redis:/data -p "127.0.0.1:$REDIS_PORT:6379" "$redis"
    wait_for PostgreSQL docker exec ccd-postgres pg_isready -U ccd -d ccd -h 127.0.0.1
    wait_for Redis docker exec ccd-redis redis-cli ping

    # Session containers reach the gateway on the host through the network's gateway address.
    local host_ip
    host_ip=$(docker network inspect -f '{{(index .IPAM.Config 0).Gateway}}' "$NETWORK")
    mkdir -p "$STATE_DIR"
    if [[ -z ${JWT_SECRET:-} ]] && ! grep -qs '^JWT_SECRET=.' .env; then
        [[ -s $STATE_DIR/jwt-secret ]] \
            || .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))' \
                >"$STATE_DIR/jwt-secret"
        JWT_SECRET=$(cat "$STATE_DIR/jwt-secret")
        export JWT_SECRET
        log "using the generated JWT secret in .cc-docker/jwt-secret"
    fi
    export PORT="${PORT:-8000}"
    export DATABASE_URL="${DATABASE_URL:-postgresql+asyncpg://ccd:ccd@127.0.0.1:$POSTGRES_PORT/ccd}"
    export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/0}"
    export SESSION_NETWORK="${SESSION_NETWORK:-$NETWORK}"
    export SESSION_REDIS_URL="${SESSION_REDIS_URL:-redis://ccd-redis:6379/0}"
    export SESSION_GATEWAY_URL="${SESSION_GATEWAY_URL:-http://$host_ip:$PORT}"
    export LOG_JSON="${LOG_JSON:-false}"

    .venv/bin/python -m gateway migrate
    log "gateway on http://127.0.0.1:$PORT (API docs: /docs). A token for user 'demo':"
    .venv/bin/python -m gateway token --sub demo
    exec .venv/bin/python -m gateway serve --no-migrate
}

main "$@"
