"""`hub demo` (the README's first command): the seed's voice broadcast end to end.

It migrates the database, brings up the embedded Asterisk, starts SIPp phones that behave
like a real audience (some answer and listen, one is busy, one never answers, one hangs
up early, one number does not exist), serves the campaign's mp3 over HTTP, runs
`hub api`, `hub worker` and `hub voice` as separate processes, registers a trunk with a
dial-prefix rule (+977 → 0), submits the instruction through the HTTP API with short
retry intervals, follows it and prints the session report.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from hub import reports
from hub.cli.client import Client
from hub.config import Settings
from hub.dev.phones import Phones, RtpCounter
from hub.dev.procs import stop_all
from hub.dev.smtp import free_port
from hub.store import sessions
from hub.store.apps import create_app
from hub.store.db import create_pool, migrate

PROJECT = Path(__file__).resolve().parent.parent
ASTERISK = PROJECT / "scripts" / "asterisk.sh"
AUDIENCE = [  # the last digit decides how each phone behaves (hub/dev/phones.xml)
    "+9779812345670",   # answers and listens
    "+9779812345681",   # busy every time
    "+9779812345692",   # rings, never answered
    "+9779812345603",   # 404: not a number in service
    "+9779812345610",   # answers and listens
    "+9779812345626",   # answers, hangs up after a second
    "+977 981-234-5640",  # answers and listens (written loosely; normalised to E.164)
]


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 (kept open for the child's lifetime)
    return subprocess.Popen([sys.executable, "-m", "hub.cli.main", *args], env=env,
                            stdout=out, stderr=subprocess.STDOUT)


def _wait_healthy(url: str, timeout_s: float = 30) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the hub API did not come up at {url}")


def _serve_sounds() -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(PROJECT / "sounds"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


async def _setup(settings: Settings) -> str:
    await migrate(settings.database_url)
    pool = await create_pool(settings.database_url, max_size=1)
    try:
        return (await create_app(pool, "demo")).api_key
    finally:
        await pool.close()


async def _report(settings: Settings, session_id: str) -> dict[str, Any]:
    pool = await create_pool(settings.database_url, max_size=1)
    try:
        row = await sessions.get(pool, None, uuid.UUID(session_id))
        return await reports.build(pool, row)
    finally:
        await pool.close()


def run_demo(settings: Settings) -> int:
    port = free_port()
    settings = settings.model_copy(update={"api_port": port, "allow_private_urls": True})
    env = {**os.environ, "HUB_API_PORT": str(port), "HUB_ALLOW_PRIVATE_URLS": "true",
           "HUB_RECONCILE_INTERVAL_S": "1", "HUB_DATABASE_URL": settings.database_url,
           "HUB_REDIS_URL": settings.redis_url, "HUB_LOG_LEVEL": "WARNING",
           "HUB_OPEN_TRUNKS": "trunk"}  # the embedded Asterisk's endpoint
    key = asyncio.run(_setup(settings))
    was_running = subprocess.call(["bash", str(ASTERISK), "status"]) == 0
    if subprocess.call(["bash", str(ASTERISK), "up"]) != 0:
        print("the embedded Asterisk did not start", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="hub-demo-"))
    rtp = RtpCounter()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(rtp.start())
    threading.Thread(target=loop.run_forever, daemon=True).start()
    phones = Phones(workdir, rtp.port)
    sounds, sounds_url = _serve_sounds()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        phones.start()
        procs = [_spawn([name], env, workdir / f"{name}.log") for name in ("api", "worker", "voice")]
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url)
        return _broadcast(Client(url, key), settings, sounds_url, rtp)
    finally:
        stop_all(procs)
        phones.stop()
        sounds.shutdown()
        loop.call_soon_threadsafe(loop.stop)
        if not was_running:
            subprocess.call(["bash", str(ASTERISK), "down"])


def _broadcast(client: Client, settings: Settings, sounds_url: str, rtp: RtpCounter) -> int:
    client.call("POST", "/v1/transports", {"name": "nepal-trunk", "type": "voice", "config": {
        "trunk": "trunk", "callerId": "+97715550100", "maxChannels": 10, "cps": 5,
        "ringTimeoutS": 6, "dialPrefix": [{"strip": "+977", "add": "0"}]}})
    created = client.call("POST", "/v1/sessions", {
        "transport": {"type": "voice", "fileUrl": f"{sounds_url}/demo-message.mp3"},
        "audience": AUDIENCE,
        "options": {"retries": 3, "retryIntervalMinutes": "0.05,0.1,0.15"},
        "xref": "demo-health-camp",
    })
    sid = created["sessionId"]
    print(f"session {sid}: calling {created['audienceCount']} numbers, "
          "retries after 3 s, 6 s, 9 s (the seed uses 60, 180, 600 minutes)")
    deadline, shown = time.time() + 240, ""
    while time.time() < deadline:
        session = client.call("GET", f"/v1/sessions/{sid}")
        line = f"  {session['status']:<10} {session['counts']}"
        if line != shown:
            print(line, flush=True)
            shown = line
        if session["status"] in ("completed", "cancelled"):
            break
        time.sleep(0.5)
    else:
        print("the demo session did not finish in 240 s", file=sys.stderr)
        return 1
    print()
    print(reports.to_text(asyncio.run(_report(settings, sid))))
    heard = rtp.summary()
    print(f"\nthe phones received {sum(n for n, _ in heard)} RTP packets in {len(heard)} "
          f"answered calls ({sum(s for _, s in heard):.1f} s of audio)")
    return 0
