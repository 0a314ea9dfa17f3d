#!/usr/bin/env bash
# Build the session image (container/Dockerfile) from the repository root.
#
# Environment:
#   SESSION_IMAGE        tag to build (default cc-docker/session:latest)
#   EXTRA_CA_CERTS       a PEM file or bundle of CA certificates to trust inside the image;
#                        copied to container/ca-certificates/extra-ca.crt (gitignored)
#   CLAUDE_CODE_VERSION  @anthropic-ai/claude-code version (default: the Dockerfile's)
# Extra arguments are passed to `docker build` (e.g. --no-cache, --pull).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SESSION_IMAGE="${SESSION_IMAGE:-cc-docker/session:latest}"

main() {
    cd "$REPO_ROOT"
    require_docker

    install_extra_ca_certs "$REPO_ROOT/container/ca-certificates"

    local build_args=()
    if [[ -n ${CLAUDE_CODE_VERSION:-} ]]; then
        build_args+=(--build-arg "CLAUDE_CODE_VERSION=$CLAUDE_CODE_VERSION")
    fi

    # The Dockerfile starts FROM debian:bookworm-slim, which may need making first.
    "$REPO_ROOT/scripts/make-base-image.sh"
    choose_builder

    local start=$SECONDS
    log "building $SESSION_IMAGE"
    docker_build -f container/Dockerfile -t "$SESSION_IMAGE" "${build_args[@]}" "$@" .
    log "built $SESSION_IMAGE $(docker image inspect -f '{{.Id}}' "$SESSION_IMAGE")" \
        "in $((SECONDS - start)) s"
}

main "$@"
