"""PostgreSQL stopped and started under a running campaign (root: `pg_ctlcluster`): the
hub stops sending while it cannot record, keeps its results, and resumes; every recipient
gets the message, duplicates are bounded by the messages in flight, no process dies, and
`/readyz` says 503 during the outage and 200 after."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from typing import Any

import aiohttp
import pytest

from hub.dev.smtp import SmtpSink
from tests.conftest import Procs
from tests.helpers import Api, eventually

pytestmark = pytest.mark.e2e


def _cluster() -> list[str]:
    version = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")])
    return [version[-1], "main"]


def pg(action: str) -> None:
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *_cluster(), action,
                    *(["-m", "fast"] if action == "stop" else [])], check=True, timeout=60)


async def ready(http: aiohttp.ClientSession, base: str) -> int:
    try:
        async with http.get(base + "/readyz", timeout=aiohttp.ClientTimeout(total=5)) as r:
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


CAN_RESTART_PG = (shutil.which("pg_ctlcluster") is not None and os.geteuid() == 0
                  and os.path.isdir("/etc/postgresql")
                  and not os.environ.get("HUB_TEST_NO_PG_RESTART"))  # parallel local runs


@pytest.mark.skipif(not CAN_RESTART_PG, reason="needs root and a local Debian PostgreSQL"
                    " cluster (and no HUB_TEST_NO_PG_RESTART)")
@pytest.mark.timeout(240)
async def test_postgres_restart_mid_campaign(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
    http: aiohttp.ClientSession, db: Any,
) -> None:
    _, sink = smtp_sink
    sink.delay_s = 0.03
    workers = [procs.worker(), procs.worker()]
    audience = [f"pg{i}@example.com" for i in range(3000)]
    created = await api.submit(email(audience))
    await eventually(lambda: _now(len(sink.received) >= 600), 60, "600 messages sent")

    pg("stop")
    try:
        at_stop = len(sink.received)
        await asyncio.sleep(1.0)
        assert await ready(http, api.base) == 503
        status, body = await api.get("/v1/sessions")  # a clear 503, never a 500
        assert status == 503 and body["error_id"] == "dependency-unavailable", body
        after_stop = len(sink.received)
        await asyncio.sleep(4.0)
        # Nothing goes out while results cannot be recorded (only what was in flight).
        assert len(sink.received) == after_stop
    finally:
        pg("start")
    restarted = time.monotonic()

    async def back() -> bool:
        return await ready(http, api.base) == 200
    await eventually(back, 30, "/readyz 200 after the restart")
    done = await api.wait_status(created["sessionId"], timeout_s=150)
    assert done["counts"] == {"delivered": 3000}, done["counts"]
    assert {r.rcpt for r in sink.received} == set(audience)
    dupes = sink.duplicates()
    in_flight = after_stop - at_stop + 20  # sent around the stop, plus the senders busy then
    print(f"\nstopped after {at_stop} messages; {after_stop - at_stop} more left in flight;"
          f" {len(dupes)} duplicates; done {time.monotonic() - restarted:.1f}s after the restart")
    assert len(dupes) <= in_flight
    assert all(w.poll() is None for w in workers), "a worker died"
    async with http.get(api.base + "/healthz") as r:
        assert r.status == 200
    stuck = await db.fetchval(
        "SELECT count(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
        " WHERE d.session_id = $1 AND a.ended_at IS NULL", created["sessionId"])
    assert stuck == 0


def email(audience: list[str]) -> dict[str, Any]:
    return {"transport": {"type": "email", "subject": "Restart", "message": "Body"},
            "audience": audience}


async def _now(value: Any) -> Any:
    return value
