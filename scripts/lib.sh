# shellcheck shell=bash
# Helpers shared by the build scripts in this folder. Source it; it runs nothing by itself.

# Absolute path of the repository root, whatever the caller's working directory.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT

# Each line carries the wall-clock time, so that a CI log shows where its minutes went.
log() {
    printf '[%s %(%H:%M:%S)T] %s\n' "$(basename "$0")" -1 "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# Fail early with one clear line instead of a wall of client errors.
require_docker() {
    command -v docker >/dev/null 2>&1 || die "the docker CLI is not on PATH"
    docker info >/dev/null 2>&1 || die "the Docker engine does not answer (is dockerd running?)"
}

# Use BuildKit when the buildx component exists (the CLI's default then). Without it the
# CLI would refuse BuildKit, so ask for the legacy builder explicitly.
choose_builder() {
    if docker buildx version >/dev/null 2>&1; then
        DOCKER_BUILD_LEGACY=0
    else
        export DOCKER_BUILDKIT=0
        DOCKER_BUILD_LEGACY=1
    fi
}

# docker build with the CLI's fixed "legacy builder is deprecated" notice removed from stderr:
# it is printed on every legacy build and would bury real errors. Everything else passes
# through unchanged, and the exit status is docker's (pipefail). --force-rm: the legacy
# builder otherwise leaves the container of a failed step behind.
docker_build() {
    if [[ ${DOCKER_BUILD_LEGACY:-0} == 1 ]]; then
        { docker build --force-rm "$@" 2>&1 1>&3 3>&- | awk '
            /^DEPRECATED: The legacy builder/ { skip = 1; next }
            skip && /^[[:space:]]/ { next }
            skip && /^$/ { skip = 0; next }
            { skip = 0; print; fflush() }' >&2; } 3>&1
    else
        docker build "$@"
    fi
}

# Copy EXTRA_CA_CERTS (a PEM file or bundle) to DIR/extra-ca.crt: the images trust the .crt files
# of their build context (container/ca-certificates/README.md).
install_extra_ca_certs() {
    local target=$1
    if [[ -z ${EXTRA_CA_CERTS:-} ]]; then
        return
    fi
    [[ -f $EXTRA_CA_CERTS && -r $EXTRA_CA_CERTS ]] \
        || die "EXTRA_CA_CERTS=$EXTRA_CA_CERTS is not a readable file"
    grep -q -- '-----BEGIN CERTIFICATE-----' "$EXTRA_CA_CERTS" \
        || die "EXTRA_CA_CERTS=$EXTRA_CA_CERTS holds no PEM certificate"
    # The name must end in .crt or update-ca-certificates ignores it. cp keeps the build
    # cache valid when the content is unchanged (the cache keys on content).
    cp "$EXTRA_CA_CERTS" "$target/extra-ca.crt"
    log "added $EXTRA_CA_CERTS as ${target#"$REPO_ROOT"/}/extra-ca.crt"
}
