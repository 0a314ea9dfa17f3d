#!/usr/bin/env bash
# The test command (README: "run the tests"). Needs a running Docker engine; everything else it
# makes itself: a virtualenv in .venv with the gateway, client (SDK, `ccd`) and test
# dependencies, the session image and the stand-in PostgreSQL/Redis images (all quick when
# cached). Then pytest, with any arguments given here (for example: scripts/test.sh -k websocket).
#
# Environment: EXTRA_CA_CERTS (see scripts/build-container.sh), PYTHON (default python3).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Some tests run the real CLI on the host: use exactly the binary the session image carries.
copy_claude_cli() {
    local image="${SESSION_IMAGE:-cc-docker/session:latest}" stamp=.venv/.claude-image-id
    local image_id container
    image_id=$(docker image inspect -f '{{.Id}}' "$image")
    if [[ ! -x .venv/bin/claude || $(cat "$stamp" 2>/dev/null) != "$image_id" ]]; then
        container=$(docker create "$image")
        docker cp "$container:/usr/local/bin/claude" .venv/bin/claude
        docker rm "$container" >/dev/null
        printf '%s\n' "$image_id" >"$stamp"
        log "copied the Claude Code CLI out of $image into .venv/bin/claude"
    fi
    export CLAUDE_BIN="$REPO_ROOT/.venv/bin/claude"
}

main() {
    cd "$REPO_ROOT"
    require_docker

    if [[ ! -x .venv/bin/python ]]; then
        log "creating .venv"
        "${PYTHON:-python3}" -m venv .venv
    fi
    log "installing the gateway, client and test dependencies into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[gateway,client,test]'

    "$REPO_ROOT/scripts/build-container.sh"
    "$REPO_ROOT/scripts/build-standins.sh"
    copy_claude_cli

    log "running pytest"
    local status=0
    .venv/bin/python -m pytest "$@" || status=$?
    if [[ $status -eq 5 ]]; then
        die "pytest collected no tests: that is a failure, not a pass"
    fi
    return "$status"
}

main "$@"
