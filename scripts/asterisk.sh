#!/usr/bin/env bash
# The embedded Asterisk test bed (DESIGN §10): a Debian-sid root folder with Asterisk,
# cached between runs, configured from asterisk/ and dialplan/.
#   scripts/asterisk.sh up [--json]   build (once), configure, start, wait for ARI
#   scripts/asterisk.sh down          stop Asterisk and unmount everything
#   scripts/asterisk.sh status        exit 0 if running
# Fixed bed: ARI http://127.0.0.1:8088, AMI 127.0.0.1:5038, SIP 127.0.0.1:5060, PJSIP
# trunk endpoint `trunk` whose contact is sip:127.0.0.1:5070 (the demo's and tests' SIPp).
# HUB_ASTERISK_INSTANCE=2 runs a second Asterisk beside it, for tests of several hosts:
# its own root state (a hard-linked copy of the root folder), ARI 8089, AMI 5039, SIP
# 5062, RTP 20002-30000, FastAGI at 127.0.0.1:4574 (instance N: 4572+N), the same trunk
# and phones. HUB_AGI_ADDR (host:port of `hub voice`'s FastAGI server) overrides it.
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=$(pwd)

BASE_ROOT=${HUB_ASTERISK_ROOT:-/var/cache/connect-hub/asterisk-sid}
INSTANCE=${HUB_ASTERISK_INSTANCE:-1}
if [ "$INSTANCE" = 1 ]; then
    ROOT=$BASE_ROOT
    export HUB_ASTERISK_HTTP_PORT=8088 HUB_AMI_PORT=5038 HUB_RTP_START=10000 HUB_RTP_END=20000
    DEFAULT_SIP=127.0.0.1:5060
else
    ROOT=$BASE_ROOT-$INSTANCE
    export HUB_ASTERISK_HTTP_PORT=$((8087 + INSTANCE)) HUB_AMI_PORT=$((5037 + INSTANCE))
    export HUB_RTP_START=$((20002 + (INSTANCE - 2) * 10000)) HUB_RTP_END=$((29998 + (INSTANCE - 2) * 10000))
    DEFAULT_SIP=127.0.0.1:$((5058 + 2 * INSTANCE))
fi
MEDIA=${HUB_MEDIA_DIR:-/var/lib/connect-hub/media}
export HUB_ARI_USER=${HUB_ARI_USER:-hub} HUB_ARI_PASSWORD=${HUB_ARI_PASSWORD:-hub}
export HUB_AMI_USER=${HUB_AMI_USER:-hub} HUB_AMI_PASSWORD=${HUB_AMI_PASSWORD:-hub}
export HUB_ASTERISK_HTTP_BIND=${HUB_ASTERISK_HTTP_BIND:-127.0.0.1}
export HUB_ASTERISK_AMI_BIND=${HUB_ASTERISK_AMI_BIND:-127.0.0.1}
export HUB_SIP_BIND=${HUB_SIP_BIND:-$DEFAULT_SIP}
export HUB_TRUNK_CONTACT=${HUB_TRUNK_CONTACT:-127.0.0.1:5070}
export HUB_TRUNK_MATCH=${HUB_TRUNK_MATCH:-127.0.0.1}
export HUB_AGI_ADDR=${HUB_AGI_ADDR:-127.0.0.1:$((4572 + INSTANCE))}  # the hub's FastAGI server

log() { echo "asterisk: $*" >&2; }

mirror() {
    local url
    url=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | grep -m1 -E 'debian(/)?$|debian ' | awk '{print $2}' || true)
    echo "${url:-http://deb.debian.org/debian}"
}

build_root() {
    [ -x "$ROOT/usr/sbin/asterisk" ] && return 0
    if [ "$ROOT" != "$BASE_ROOT" ]; then  # a further instance: its own copy of the first
        ROOT=$BASE_ROOT build_root
        rm -rf --one-file-system "$ROOT.copy"
        # Programs hard-linked, the state under var/ copied for real (its database, logs and
        # spool are its own); never what is mounted into the base (proc, dev, the media).
        mkdir -p "$ROOT.copy/proc" "$ROOT.copy/dev" "$ROOT.copy/run" "$ROOT.copy/tmp"
        chmod 1777 "$ROOT.copy/tmp"
        local entry
        for entry in "$BASE_ROOT"/*; do
            case "$(basename "$entry")" in
                proc|dev|var|run|tmp) ;;  # mounts, state, sockets: never shared
                *) cp -al "$entry" "$ROOT.copy/" ;;
            esac
        done
        tar -C "$BASE_ROOT" --exclude=./var/lib/asterisk/sounds/hub --exclude=./var/run \
            --exclude=./var/lock -cf - ./var \
            | tar -C "$ROOT.copy" -xf -
        mkdir -p "$ROOT.copy/var/lib/asterisk/sounds/hub"
        mv "$ROOT.copy" "$ROOT"
        return 0
    fi
    command -v debootstrap >/dev/null || {
        apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
    local tmp="$ROOT.tmp"
    umount_all "$tmp"
    rm -rf --one-file-system "$tmp"
    mkdir -p "$(dirname "$ROOT")"
    log "building the Debian sid root with Asterisk in $ROOT (about a minute, once)"
    debootstrap --variant=minbase --include=asterisk,asterisk-core-sounds-en-gsm \
        sid "$tmp" "$(mirror)" >/tmp/hub-debootstrap.log 2>&1 \
        || { log "debootstrap failed, see /tmp/hub-debootstrap.log"; umount_all "$tmp"; exit 1; }
    umount_all "$tmp"
    mv "$tmp" "$ROOT"
}

render() {  # substitute ${HUB_*} from the environment
    perl -pe 's/\$\{(HUB_\w+)\}/exists $ENV{$1} ? $ENV{$1} : die "unset $1\n"/ge' "$1"
}

configure() {
    local etc="$ROOT/etc/asterisk"
    rm -rf "$etc"
    mkdir -p "$etc/dialplan"
    for f in "$PROJECT"/asterisk/*.conf; do render "$f" > "$etc/$(basename "$f")"; done
    cp "$PROJECT"/dialplan/*.conf "$etc/dialplan/"
    cp /etc/hosts "$ROOT/etc/hosts"
    [ -f /etc/hostname ] && cp /etc/hostname "$ROOT/etc/hostname"
    mkdir -p "$MEDIA" "$ROOT/var/lib/asterisk/sounds/hub" "$ROOT/var/run/asterisk"
}

mounted() { mountpoint -q "$1" 2>/dev/null; }

mount_all() {
    mounted "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    mounted "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
    mounted "$ROOT/var/lib/asterisk/sounds/hub" || mount --bind "$MEDIA" "$ROOT/var/lib/asterisk/sounds/hub"
}

umount_all() {
    local dir=${1:-$ROOT}
    for m in var/lib/asterisk/sounds/hub dev/pts dev proc; do
        if mounted "$dir/$m"; then umount "$dir/$m" 2>/dev/null || umount -l "$dir/$m"; fi
    done
}

pids() {  # Asterisk processes running inside our root folder (and no other Asterisk)
    local p
    for p in $(pgrep -x asterisk 2>/dev/null); do
        [ "$(readlink "/proc/$p/root" 2>/dev/null)" = "$ROOT" ] && echo "$p"
    done
    return 0
}

running() { [ -n "$(pids)" ] && chroot "$ROOT" asterisk -rx "core show version" >/dev/null 2>&1; }

wait_ari() {
    for _ in $(seq 1 150); do
        if curl -sf -u "$HUB_ARI_USER:$HUB_ARI_PASSWORD" http://127.0.0.1:$HUB_ASTERISK_HTTP_PORT/ari/asterisk/info >/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    log "ARI did not answer on 127.0.0.1:$HUB_ASTERISK_HTTP_PORT; see $ROOT/var/log/asterisk/messages.log"
    return 1
}

up() {
    build_root
    if running; then
        log "already running; reloading configuration"
        configure
        chroot "$ROOT" asterisk -rx "core reload" >/dev/null
    else
        configure
        mount_all
        chroot "$ROOT" asterisk -F 2>/dev/null || { umount_all; exit 1; }
    fi
    wait_ari || { down; exit 1; }
    # ARI answers before every module is loaded; calls placed then may never report back.
    for _ in $(seq 1 120); do
        timeout 30 chroot "$ROOT" asterisk -rx "core waitfullybooted" >/dev/null 2>&1 && break
        sleep 0.25
    done
    if [ "${1:-}" = "--json" ]; then
        printf '{"ari": {"url": "http://127.0.0.1:%s", "user": "%s", "password": "%s"}, "ami": {"host": "127.0.0.1", "port": %s, "user": "%s", "password": "%s"}, "root": "%s", "media": "%s"}\n' \
            "$HUB_ASTERISK_HTTP_PORT" "$HUB_ARI_USER" "$HUB_ARI_PASSWORD" "$HUB_AMI_PORT" "$HUB_AMI_USER" "$HUB_AMI_PASSWORD" "$ROOT" "$MEDIA"
    else
        log "up: ARI http://127.0.0.1:$HUB_ASTERISK_HTTP_PORT (user $HUB_ARI_USER), AMI 127.0.0.1:$HUB_AMI_PORT, SIP $HUB_SIP_BIND, trunk -> sip:$HUB_TRUNK_CONTACT"
    fi
}

down() {
    if [ -d "$ROOT" ] && running; then
        chroot "$ROOT" asterisk -rx "core stop now" >/dev/null 2>&1 || true
    fi
    for _ in $(seq 1 50); do [ -n "$(pids)" ] || break; sleep 0.1; done
    local left
    left=$(pids)
    [ -z "$left" ] || kill -9 $left 2>/dev/null || true
    umount_all
}

case "${1:-}" in
    up) shift; up "$@" ;;
    down) down ;;
    status) running ;;
    hangup-all) chroot "$ROOT" asterisk -rx "channel request hangup all" >/dev/null 2>&1 || true ;;
    restart) down; up ;;
    *) echo "usage: $0 up [--json] | down | status | restart | hangup-all" >&2; exit 2 ;;
esac
