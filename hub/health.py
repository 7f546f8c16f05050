"""`python -m hub.health [api|worker|voice]`: a container's health check, exit 0 when the
process in this container does its job. Without an argument the role is that of the
container's main process (PID 1, `hub api|worker|voice`); any other is healthy while it
runs (`hub migrate` is a one-shot).
- api: GET /healthz on the API's own port answers 200;
- worker: an RQ worker registered in Redis (its registration expires without heartbeats)
  is a `hub worker` process of this container (its hostname and a PID alive here);
- voice: this controller (HUB_VOICE_ID) published its heartbeat in the last 10 s and
  holds its ARI connection."""

from __future__ import annotations

import socket
import sys
import urllib.request
from pathlib import Path

from redis import Redis
from rq import Worker

from hub.config import Settings
from hub.jobs.queueing import VOICE_ALIVE_KEY


def api(settings: Settings) -> str | None:
    url = f"http://127.0.0.1:{settings.api_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:  # noqa: S310 (loopback)
            return None if answer.status == 200 else f"{url} answered {answer.status}"
    except OSError as exc:
        return f"{url}: {exc}"


def worker(settings: Settings) -> str | None:
    redis = Redis.from_url(settings.redis_url, socket_timeout=3)
    host = socket.gethostname()
    for w in Worker.all(connection=redis):
        cmdline = Path(f"/proc/{w.pid}/cmdline")
        if w.hostname == host and cmdline.exists() and b"worker" in cmdline.read_bytes():
            return None
    return f"no RQ worker of this container ({host}) is registered in Redis"


def voice(settings: Settings) -> str | None:
    from hub.voice.controller import owner_of

    owner = owner_of(settings)
    state = Redis.from_url(settings.redis_url, socket_timeout=3).get(f"{VOICE_ALIVE_KEY}:{owner}")
    if state is None:
        return f"voice controller {owner}: no heartbeat in the last 10 s"
    if state != b"ari-up":
        return f"voice controller {owner}: not connected to Asterisk's ARI"
    return None


CHECKS = {"api": api, "worker": worker, "voice": voice}


def role_of_main_process() -> str | None:
    try:
        args = Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    return next((a for a in args if a in CHECKS), None)


def main(argv: list[str]) -> int:
    role = argv[0] if argv else role_of_main_process()
    if len(argv) > 1 or (argv and role not in CHECKS):
        print(f"usage: python -m hub.health [{'|'.join(CHECKS)}]", file=sys.stderr)
        return 2
    if role is None:
        print("ok (not a long-running hub role)")
        return 0
    try:
        problem = CHECKS[role](Settings())
    except Exception as exc:  # a health check reports, it never raises
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        print(problem, file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
