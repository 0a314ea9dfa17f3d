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

# The web console's tests drive Debian's Chromium and chromedriver. Installed here when missing
# and this user may (root, or sudo without a password); otherwise those tests fail and say how.
ensure_browser() {
    if [[ -n ${CHROMIUM_BIN:-} && -n ${CHROMEDRIVER_BIN:-} ]]; then
        return
    fi
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        return
    fi
    local sudo=()
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        if ! command -v apt-get >/dev/null 2>&1 || ! sudo -n true 2>/dev/null; then
            log "chromium or chromedriver is missing and cannot be installed here; the console" \
                "tests will fail (Debian: apt-get install -y chromium chromium-driver; elsewhere" \
                "set CHROMIUM_BIN and CHROMEDRIVER_BIN)"
            return
        fi
        sudo=(sudo -n)
    fi
    log "installing Chromium and chromedriver for the console tests"
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
        chromium-driver >/dev/null
}

main() {
    cd "$REPO_ROOT"
    require_docker
    ensure_browser

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
    # The slowest tests are listed at the end: the whole run is meant to stay under 20 minutes.
    .venv/bin/python -m pytest --durations=25 "$@" || status=$?
    if [[ $status -eq 5 ]]; then
        die "pytest collected no tests: that is a failure, not a pass"
    fi
    return "$status"
}

main "$@"
