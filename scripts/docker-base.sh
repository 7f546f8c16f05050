#!/usr/bin/env bash
# Local base images for machines without an image registry (DESIGN §10): a minimal Debian
# root made with debootstrap from the machine's own apt mirror, imported with `docker
# import`. The Dockerfiles take their base from a build argument whose default is the
# public image; pass the local one instead:
#   scripts/docker-base.sh bookworm   ->  connect-hub-base:bookworm  (for ./Dockerfile)
#   scripts/docker-base.sh sid        ->  connect-hub-base:sid       (for asterisk/Dockerfile)
#   docker build --build-arg BASE=connect-hub-base:bookworm .
# Cached twice: the image itself (nothing is done while it exists) and the root's tarball
# in $HUB_DOCKER_BASE_CACHE (default /var/cache/connect-hub/docker-base), so that a wiped
# Docker data folder imports again in seconds. `--rebuild` makes both afresh.
set -euo pipefail

CACHE=${HUB_DOCKER_BASE_CACHE:-/var/cache/connect-hub/docker-base}
DOCKER=${DOCKER:-docker}

log() { echo "docker-base: $*" >&2; }

mirror() {  # the Debian mirror the machine's own apt sources use
    local url
    url=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | grep -m1 -E 'debian/?$' | awk '{print $2}' || true)
    echo "${url:-http://deb.debian.org/debian}"
}

build_tar() {
    local suite=$1 tar=$2 root="$CACHE/$1.root"
    command -v debootstrap >/dev/null || {
        apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
    rm -rf --one-file-system "$root"
    mkdir -p "$CACHE"
    log "debootstrapping Debian $suite from $(mirror) (about a minute, once)"
    debootstrap --variant=minbase "$suite" "$root" "$(mirror)" >"$CACHE/$suite.log" 2>&1 \
        || { log "debootstrap failed, see $CACHE/$suite.log"; rm -rf --one-file-system "$root"; exit 1; }
    local m=$(mirror)
    if [ "$suite" != sid ]; then  # what the public image has: updates and security fixes
        printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
            "$m" "$suite" "$m" "$suite" "${m%/debian}/debian-security" "$suite" \
            > "$root/etc/apt/sources.list"
    fi
    # As the slim images: no apt lists, no caches, no documentation installed later on.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    printf 'path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\n' \
        > "$root/etc/dpkg/dpkg.cfg.d/docker-slim"
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
        > "$root/etc/apt/apt.conf.d/docker-no-recommends"
    echo 'Acquire::Languages "none";' > "$root/etc/apt/apt.conf.d/docker-no-languages"
    # A mirror reached from a machine without a registry may serve a snapshot whose
    # Release files are past their Valid-Until (sid's and security's carry one); debootstrap
    # does not check it, apt would refuse. The public images never get this file.
    echo 'Acquire::Check-Valid-Until "false";' > "$root/etc/apt/apt.conf.d/docker-local-mirror"
    # The machine's own trust: certificate authorities it added (a proxy's, a company's)
    # are trusted inside too once an image installs ca-certificates, and pip uses the
    # system bundle as on the machine. Public keys only; the public images never get them.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        mkdir -p "$root/usr/local/share/ca-certificates"
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    fi
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
    : > "$root/etc/hostname"
    tar --numeric-owner -C "$root" -cf "$tar.tmp" .
    mv "$tar.tmp" "$tar"
    rm -rf --one-file-system "$root"
}

base() {
    local suite=$1 rebuild=${2:-} image="connect-hub-base:$1" tar="$CACHE/$1.tar"
    if [ -z "$rebuild" ] && $DOCKER image inspect "$image" >/dev/null 2>&1; then
        log "$image is there"
        return 0
    fi
    [ -n "$rebuild" ] && rm -f "$tar"
    [ -f "$tar" ] || build_tar "$suite" "$tar"
    $DOCKER import -c 'CMD ["/bin/bash"]' -c 'ENV LANG=C.UTF-8' "$tar" "$image" >/dev/null
    log "$image imported from $tar"
}

rebuild=
args=()
for a in "$@"; do
    case "$a" in
        --rebuild) rebuild=1 ;;
        bookworm|sid) args+=("$a") ;;
        *) echo "usage: $0 [--rebuild] bookworm|sid ..." >&2; exit 2 ;;
    esac
done
[ ${#args[@]} -gt 0 ] || args=(bookworm sid)
for suite in "${args[@]}"; do base "$suite" "$rebuild"; done
