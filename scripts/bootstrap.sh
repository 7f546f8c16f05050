#!/usr/bin/env bash
# Installs and starts what the hub needs on a fresh Debian/Ubuntu machine (as root).
# Idempotent: every step checks before it acts.
#   scripts/bootstrap.sh system     apt packages (python venv, build tools, curl)
#   scripts/bootstrap.sh python     .venv with the hub and its dev tools
#   scripts/bootstrap.sh services   PostgreSQL and Redis, unless already reachable
set -euo pipefail
cd "$(dirname "$0")/.."

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
have() { command -v "$1" >/dev/null 2>&1; }
APT_UPDATED=""
apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then echo "bootstrap: need root to install: ${missing[*]}" >&2; exit 1; fi
    [ -n "$APT_UPDATED" ] || { apt-get update -qq; APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

system() {
    have python3 || apt_install python3
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
    have gcc || apt_install gcc python3-dev
    have curl || apt_install curl ca-certificates
    # Voice: SIPp phones, audio conversion and speech, the Asterisk root folder builder.
    have sipp || apt_install sip-tester
    have sox || apt_install sox
    dpkg -s libsox-fmt-mp3 >/dev/null 2>&1 || apt_install libsox-fmt-mp3
    have espeak-ng || apt_install espeak-ng
    have debootstrap || apt_install debootstrap
    have mountpoint || apt_install util-linux
    have perl || apt_install perl
    have pgrep || apt_install procps
    # Dashboard tests: headless Chromium driven over the DevTools protocol.
    have chromium || apt_install chromium
}

python_env() {
    local stamp=.venv/.installed
    if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        .venv/bin/pip install -q --upgrade pip
        .venv/bin/pip install -q -e '.[dev]'
        touch "$stamp"
    fi
}

postgres() {
    if [ -n "${HUB_DATABASE_URL:-}" ] || listening 5432; then return 0; fi
    have pg_ctlcluster || apt_install postgresql
    local ver
    ver=$(ls /etc/postgresql | sort -V | tail -n1)
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    for _ in $(seq 1 30); do listening 5432 && break; sleep 0.5; done
    # The embedded default DSN is postgres:postgres@127.0.0.1 (see README, HUB_DATABASE_URL).
    su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
}

redis() {
    if [ -n "${HUB_REDIS_URL:-}" ] || listening 6379; then return 0; fi
    have redis-server || apt_install redis-server
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/hub.log
    for _ in $(seq 1 30); do listening 6379 && break; sleep 0.2; done
}

case "${1:-all}" in
    system) system ;;
    python) python_env ;;
    services) postgres; redis ;;
    all) system; python_env; postgres; redis ;;
    *) echo "usage: $0 [system|python|services|all]" >&2; exit 2 ;;
esac
