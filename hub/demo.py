"""`hub demo`: a broadcast end to end on embedded defaults, then its report.

It migrates the database, starts an SMTP sink that behaves like a real audience (most
mailboxes accept, some are busy twice, one bounces), runs `hub api` and `hub worker` as
separate processes, submits the instruction through the HTTP API, follows progress and
prints the session report.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

from hub import reports
from hub.cli.client import Client
from hub.config import Settings
from hub.dev import smtp
from hub.store import sessions
from hub.store.apps import create_app
from hub.store.db import create_pool, migrate

AUDIENCE = [
    "asha@example.com", "bikash@example.com", "chandra@example.com", "dipa@example.com",
    "Elina <elina@example.com>", "ASHA@example.com", "bounce.farid@example.com",
    "gita@example.org",
]
BUSY_TWICE = ("chandra@example.com", "gita@example.org")


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "hub.cli.main", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_healthy(url: str, timeout_s: float = 30) -> None:
    import urllib.request

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the hub API did not come up at {url}")


async def _setup(settings: Settings) -> str:
    await migrate(settings.database_url)
    pool = await create_pool(settings.database_url, max_size=1)
    try:
        return (await create_app(pool, "demo")).api_key
    finally:
        await pool.close()


async def _report(settings: Settings, session_id: str) -> dict[str, Any]:
    import uuid

    pool = await create_pool(settings.database_url, max_size=1)
    try:
        row = await sessions.get(pool, None, uuid.UUID(session_id))
        return await reports.build(pool, row)
    finally:
        await pool.close()


def run_demo(settings: Settings) -> int:
    port = smtp.free_port()
    settings = settings.model_copy(update={"api_port": port, "allow_private_urls": True})
    env = {**os.environ, "HUB_API_PORT": str(port), "HUB_ALLOW_PRIVATE_URLS": "true",
           "HUB_RECONCILE_INTERVAL_S": "1", "HUB_DATABASE_URL": settings.database_url,
           "HUB_REDIS_URL": settings.redis_url, "HUB_LOG_LEVEL": "WARNING"}
    key = asyncio.run(_setup(settings))
    controller, sink = smtp.start()
    for address in BUSY_TWICE:
        sink.scripts[address] = ["451 4.2.1 mailbox busy, try later"] * 2
    procs = [_spawn(["api"], env), _spawn(["worker"], env)]
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url)
        client = Client(url, key)
        client.call("POST", "/v1/transports", {"name": "smtp", "type": "email", "config": {
            "host": "127.0.0.1", "port": controller.port, "from": "Connect Hub <hub@example.com>"}})
        created = client.call("POST", "/v1/sessions", {
            "transport": {"type": "email", "subject": "Community meeting on Friday",
                          "message": "Namaste! The ward meeting is on Friday at 10:00."},
            "audience": AUDIENCE,
            "options": {"retries": 2, "retryIntervalMinutes": "0.05"},
            "xref": "demo",
        })
        sid = created["sessionId"]
        print(f"session {sid}: {created['audienceCount']} recipients "
              f"({created['duplicatesRemoved']} duplicate removed), retries every 3 s")
        deadline, shown = time.time() + 120, ""
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
            print("the demo session did not finish in 120 s", file=sys.stderr)
            return 1
        print()
        print(reports.to_text(asyncio.run(_report(settings, sid))))
        print(f"\nthe SMTP server received {len(sink.received)} messages")
        return 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        controller.stop()
