#!/usr/bin/env bash
# Make sure the base image every Dockerfile of this project starts FROM exists locally.
#
# A normal machine pulls the official debian:bookworm-slim. Where no registry is reachable the
# image is built from Debian's own packages with debootstrap and imported under the same tag,
# so the Dockerfiles build unchanged in both places. Idempotent: an existing image is kept.
#
# Environment:
#   BASE_IMAGE     tag to check and create (default debian:bookworm-slim)
#   DEBIAN_MIRROR  Debian mirror for debootstrap (default: the host's apt configuration)
#   PULL_TIMEOUT   seconds to wait for `docker pull` before falling back (default 60)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BASE_IMAGE="${BASE_IMAGE:-debian:bookworm-slim}"
SUITE=bookworm
PULL_TIMEOUT="${PULL_TIMEOUT:-60}"

# Print the mirror URI apt on this host uses for Debian: the stanza (or line) for $SUITE if
# there is one, otherwise the first one that is not the security archive (a Debian mirror
# carries every suite). Prints nothing when the host has no Debian sources.
host_debian_mirror() {
    local deb822=/etc/apt/sources.list.d/debian.sources
    local legacy=/etc/apt/sources.list
    local uri=""
    if [[ -r $deb822 ]]; then
        uri="$(awk -v suite="$SUITE" '
            BEGIN { RS = ""; FS = "\n" }   # one record per blank-line separated stanza
            {
                uris = ""; exact = 0; security = 0
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^URIs:/) {
                        sub(/^URIs:[[:space:]]*/, "", line); split(line, u, /[[:space:]]+/)
                        uris = u[1]
                    } else if (line ~ /^Suites:/) {
                        sub(/^Suites:[[:space:]]*/, "", line); n = split(line, s, /[[:space:]]+/)
                        for (j = 1; j <= n; j++) {
                            if (s[j] == suite) exact = 1
                            if (s[j] ~ /-security$/) security = 1
                        }
                    }
                }
                if (uris == "") next
                if (exact) { best = uris; exit }
                if (!security && first == "") first = uris
            }
            END { print (best != "" ? best : first) }' "$deb822")"
    fi
    if [[ -z $uri && -r $legacy ]]; then
        uri="$(awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }   # skip [options]
                if ($(i + 1) == suite) { best = $i; exit }
                if (first == "" && $(i + 1) !~ /-security$/) first = $i
            }
            END { print (best != "" ? best : first) }' "$legacy")"
    fi
    printf '%s\n' "$uri"
}

# Make a debootstrap tree behave like the official "slim" image: apt keeps no .debs, caches or
# translations, and dpkg skips docs, man pages and locales. Without this every Dockerfile's
# apt-get install leaves its downloaded packages in a layer (over 100 MB for the session image).
slim_rootfs() {
    local dir=$1
    cat >"$dir/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    printf 'Acquire::Languages "none";\n' >"$dir/etc/apt/apt.conf.d/docker-no-languages"
    printf 'Acquire::GzipIndexes "true";\n' >"$dir/etc/apt/apt.conf.d/docker-gzip-indexes"
    printf 'Apt::AutoRemove::SuggestsImportant "false";\n' \
        >"$dir/etc/apt/apt.conf.d/docker-autoremove-suggests"
    cat >"$dir/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
    # The same for what debootstrap already installed.
    find "$dir/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
    find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$dir"/usr/share/{groff,info,linda,locale,man}/* "$dir"/usr/share/lintian/overrides/*
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/cache/apt/*.bin "$dir"/var/lib/apt/lists/*
}

# Remove the debootstrap tree. A failed debootstrap can leave /proc and /sys mounted inside
# it; unmount them and never let rm cross into another file system.
remove_tree() {
    local dir=$1 mnt
    for mnt in proc sys; do
        if mountpoint -q "$dir/$mnt" 2>/dev/null; then
            umount -l "$dir/$mnt" || true
        fi
    done
    rm -rf --one-file-system "$dir"
}

main() {
    require_docker

    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "$BASE_IMAGE is already present; nothing to do"
        return 0
    fi

    log "trying: docker pull $BASE_IMAGE (at most ${PULL_TIMEOUT}s)"
    if timeout "$PULL_TIMEOUT" docker pull "$BASE_IMAGE" >&2; then
        log "pulled $BASE_IMAGE from the registry"
        return 0
    fi
    log "no registry answered; building $BASE_IMAGE with debootstrap instead"

    [[ $EUID -eq 0 ]] || die "debootstrap needs root; run this script as root"
    if ! command -v debootstrap >/dev/null 2>&1; then
        log "installing debootstrap"
        # A fresh machine may have no package lists yet.
        apt-get install -y --no-install-recommends debootstrap >&2 \
            || { apt-get update >&2 && apt-get install -y --no-install-recommends debootstrap >&2; }
    fi

    local mirror="${DEBIAN_MIRROR:-}"
    [[ -n $mirror ]] || mirror="$(host_debian_mirror)"
    [[ -n $mirror ]] || die "found no Debian mirror in /etc/apt; set DEBIAN_MIRROR"

    local dir
    dir="$(mktemp -d "${TMPDIR:-/var/tmp}/cc-docker-rootfs.XXXXXX")"
    # shellcheck disable=SC2064  # expand $dir now: it is local to this function
    trap "remove_tree '$dir'" EXIT

    local start=$SECONDS
    log "debootstrap --variant=minbase $SUITE from $mirror"
    debootstrap --variant=minbase "$SUITE" "$dir" "$mirror" >&2
    slim_rootfs "$dir"

    # docker import keeps no configuration; give it the official image's PATH and CMD so
    # `ENV PATH=$PATH:...` and a bare `docker run` behave the same on both.
    tar -C "$dir" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        - "$BASE_IMAGE" >/dev/null
    log "imported $BASE_IMAGE $(docker image inspect -f '{{.Id}}' "$BASE_IMAGE")" \
        "in $((SECONDS - start)) s"
}

main "$@"
