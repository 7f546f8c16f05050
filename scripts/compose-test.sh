#!/usr/bin/env bash
# The container test (DESIGN §10): the production compose file, run for real.
#  1. installs docker.io and docker-compose with apt if missing, starts dockerd (no bridge,
#     no iptables: every container uses the host's network) if none runs;
#  2. builds the local Debian bases (scripts/docker-base.sh, cached) and the two images
#     from them (layers cached between runs);
#  3. runs docker-compose.yml + docker-compose.hostnet.yml against the machine's own
#     PostgreSQL (database $DB) and Redis (db $REDIS_DB), waits for every health check;
#  4. tests/compose_e2e.py: a voice broadcast through the containerised API, worker,
#     controller and Asterisk to SIPp phones on the host (RTP counted) and an email to an
#     aiosmtpd sink, final statuses read from the API;
#  5. docker-compose down -v, drops its database, stops dockerd if it started it.
# Closes with one line `compose e2e: N passed, M failed`; exit 1 if anything failed.
# Ports (none of the embedded test beds'): SIP 5064, ARI 8090, AMI 5040, RTP 30002-39998,
# phones 5074, FastAGI 4575, API $HUB_API_PORT (18080). Timings go to $TIMES.
set -uo pipefail
cd "$(dirname "$0")/.."
PROJECT_DIR=$(pwd)
PY=${PYTHON:-$PROJECT_DIR/.venv/bin/python}
DOCKER=docker
[ -x /usr/bin/docker ] && DOCKER=/usr/bin/docker   # the engine's own client
export DOCKER
PG_ADMIN=${HUB_COMPOSE_PG_ADMIN:-postgresql://postgres@127.0.0.1:5432/postgres}
DB=${HUB_COMPOSE_DB:-hub_compose}
REDIS_DB=${HUB_COMPOSE_REDIS_DB:-14}
TIMES=${HUB_COMPOSE_TIMES:-/tmp/compose-test-times.txt}
PROJECT=hubcompose
DOCKERD_PID=/run/connect-hub-dockerd.pid
PASSED=0 FAILED=0 STARTED_DOCKERD=

log() { echo "compose-test: $*" >&2; }
pass() { PASSED=$((PASSED + 1)); echo "PASS $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $1"; return 1; }
check() { local name=$1; shift; if "$@"; then pass "$name"; else fail "$name"; fi; }
timed() { local name=$1 start=$SECONDS; shift; "$@"; local rc=$?; echo "$name $((SECONDS - start)) s" >> "$TIMES"; return $rc; }

export POSTGRES_PASSWORD=unused-the-machines-own HUB_TAG=local
export HUB_ADMIN_KEY=adm-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
export HUB_ARI_PASSWORD=ari-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
export HUB_AMI_PASSWORD=ami-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
export HUB_TRUNK_CONTACT=127.0.0.1:5074 HUB_TRUNK_MATCH=127.0.0.1 HUB_SIP_BIND=127.0.0.1:5064
export HUB_ASTERISK_HTTP_PORT=8090 HUB_AMI_PORT=5040 HUB_RTP_START=30002 HUB_RTP_END=39998
export HUB_AGI_PORT=4575 HUB_API_PORT=${HUB_API_PORT:-18080} HUB_VOICE_ID=compose-voice-1
export HUB_COMPOSE_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/$DB
export HUB_COMPOSE_REDIS_URL=redis://127.0.0.1:6379/$REDIS_DB
export HUB_BASE_BOOKWORM=connect-hub-base:bookworm HUB_BASE_SID=connect-hub-base:sid
CONFIG=
compose() { docker-compose -p "$PROJECT" --project-directory "$PROJECT_DIR" -f "$CONFIG" "$@"; }

render_config() {
    # The production file merged with the host-network override. docker-compose 1.x
    # (docker-py) refuses published ports on a host-network container, where the engine
    # itself would only ignore them, and an override cannot delete a list: they are
    # dropped from the merged file here (and `expose`, meaningless on the host network).
    CONFIG=$(mktemp /tmp/compose-test-XXXXXX.yml)
    docker-compose -p "$PROJECT" -f docker-compose.yml -f docker-compose.hostnet.yml config \
        | /usr/bin/python3 -c '
import sys, yaml
config = yaml.safe_load(sys.stdin)
for service in config["services"].values():
    if service.get("network_mode") == "host":
        service.pop("ports", None)
        service.pop("expose", None)
yaml.safe_dump(config, sys.stdout, sort_keys=False)' > "$CONFIG"
}

finish() {
    local rc=$?
    if [ -n "${UP:-}" ]; then
        if [ "$FAILED" != 0 ]; then
            compose logs --no-color --tail=80 > /tmp/compose-test-logs.txt 2>&1
            log "container logs: /tmp/compose-test-logs.txt"
        fi
        timed "compose down -v" compose down -v --remove-orphans >/dev/null 2>&1 \
            || log "docker-compose down failed"
    fi
    [ -z "$CONFIG" ] || rm -f "$CONFIG"
    sql "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
    if [ -n "$STARTED_DOCKERD" ]; then
        kill "$STARTED_DOCKERD" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 0.1; done
        log "dockerd stopped"
    fi
    [ "$rc" = 0 ] || [ "$FAILED" != 0 ] || fail "the test script itself (exit $rc)"
    echo "compose e2e: $PASSED passed, $FAILED failed"
    [ "$FAILED" = 0 ]
}
trap finish EXIT

sql() { "$PY" - "$PG_ADMIN" "$1" <<'EOF'
import asyncio, sys, asyncpg
async def main() -> None:
    conn = await asyncpg.connect(sys.argv[1])
    await conn.execute(sys.argv[2])
    await conn.close()
asyncio.run(main())
EOF
}

ensure_docker() {
    if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null; then
        log "installing docker.io and docker-compose (apt)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            docker.io docker-compose >/dev/null || return 1
        [ -x /usr/bin/docker ] && DOCKER=/usr/bin/docker
    fi
    $DOCKER info >/dev/null 2>&1 && return 0
    log "starting dockerd (no bridge, no iptables; containers use the host network)"
    dockerd --bridge=none --iptables=false --ip-masq=false --pidfile "$DOCKERD_PID" \
        > /tmp/compose-test-dockerd.log 2>&1 &
    STARTED_DOCKERD=$!
    for _ in $(seq 1 150); do $DOCKER info >/dev/null 2>&1 && return 0; sleep 0.2; done
    log "dockerd did not start: /tmp/compose-test-dockerd.log"
    return 1
}

build() {
    scripts/docker-base.sh bookworm sid \
        && $DOCKER build -q --network host --build-arg BASE=$HUB_BASE_BOOKWORM \
            -t connect-hub:local . >/dev/null \
        && $DOCKER build -q --network host --build-arg BASE=$HUB_BASE_SID \
            -f asterisk/Dockerfile -t connect-hub-asterisk:local . >/dev/null
}

healthy() {  # every long-running service healthy, migrate exited 0
    local deadline=$((SECONDS + ${1:-180})) svc id state
    while [ $SECONDS -lt $deadline ]; do
        local all=1
        for svc in api worker asterisk voice; do
            id=$(compose ps -q "$svc" 2>/dev/null)
            state=$([ -n "$id" ] && $DOCKER inspect -f '{{.State.Health.Status}}' $id 2>/dev/null)
            [ "$state" = healthy ] || all=
        done
        [ -n "$all" ] && return 0
        sleep 2
    done
    compose ps >&2
    return 1
}

migrate_ok() {
    local id
    id=$(compose ps -q migrate)
    [ -n "$id" ] && [ "$($DOCKER inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$id")" = "exited 0" ]
}

runs_as_hub() { [ "$(compose exec -T "$1" id -u | tr -d '\r')" = 10001 ]; }

media_shared() {  # what the controller converted is in Asterisk's view of the volume
    local seen
    seen=$(compose exec -T asterisk sh -c 'stat -c "%u %a" /var/lib/asterisk/sounds/hub/*.wav' \
        | tr -d '\r' | sort -u)
    [ -n "$seen" ] && [ "$seen" = "10001 644" ]
}

voice_id_kept() {  # a recreated controller keeps its name, and comes back healthy
    compose up -d --force-recreate voice >/dev/null 2>&1 && healthy 60 \
        && [ "$(compose exec -T voice printenv HUB_VOICE_ID | tr -d '\r')" = "$HUB_VOICE_ID" ]
}

: > "$TIMES"
check "docker engine available" ensure_docker || exit 1
check "local bases and images built" timed "build (bases + images)" build || exit 1
for image in connect-hub-base:bookworm connect-hub-base:sid connect-hub:local connect-hub-asterisk:local; do
    echo "size $image $($DOCKER image inspect -f '{{.Size}}' $image | awk '{printf "%d MB", $1/1e6}')" >> "$TIMES"
done
sql "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" && sql "CREATE DATABASE \"$DB\"" \
    || { fail "a fresh database $DB"; exit 1; }
"$PY" -c "import redis; redis.Redis.from_url('$HUB_COMPOSE_REDIS_URL').flushdb()"
check "compose files merge (production + host network)" render_config || exit 1
UP=1
check "compose stack started" timed "compose up" compose up -d --no-build --quiet-pull || exit 1
check "every service healthy (api, worker, asterisk, voice)" timed "healthy" healthy 180 || exit 1
check "migrate ran once and exited 0" migrate_ok
check "the hub's containers run as the hub user" runs_as_hub voice
PYTHONPATH=$PROJECT_DIR HUB_API_URL=http://127.0.0.1:$HUB_API_PORT HUB_PHONES_PORT=5074 \
    timed "e2e traffic" "$PY" tests/compose_e2e.py > /tmp/compose-test-e2e.txt 2>&1
cat /tmp/compose-test-e2e.txt
PASSED=$((PASSED + $(grep -c '^PASS ' /tmp/compose-test-e2e.txt)))
FAILED=$((FAILED + $(grep -c '^FAIL ' /tmp/compose-test-e2e.txt)))
grep -qE '^(PASS|FAIL) ' /tmp/compose-test-e2e.txt || fail "the e2e driver reported nothing"
check "converted audio shared with Asterisk (owner 10001, mode 644)" media_shared
check "a recreated controller keeps HUB_VOICE_ID and is healthy again" voice_id_kept
