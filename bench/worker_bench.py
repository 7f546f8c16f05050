"""Small sessions through one worker (issue 12, what limits the API bench's end to end).

The API bench offers many small sessions a second; what the hub can *deliver* of them is
the worker's rate on small sessions, not its rate within one big session (`scale`). Here
`hub api` takes SESSIONS immediate email sessions of 2 recipients each with `webhookUrl`
set (3 webhook events each: 2 `delivery.completed`, 1 `session.completed`) while the
worker is paused (SIGSTOP); then the worker is continued and the clock runs until every
session is completed in the database and the webhook sink (its own process) has received
every event. Asserted: every delivery `delivered` with exactly one attempt, every event
delivered, none twice. Reported: sessions per second, and the CPU milliseconds per
session of the worker and of PostgreSQL (`bench/cpu.py`). Informational (no target).

    python -m bench.worker_bench [--quick] [--trials N]
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import aiohttp
import asyncpg

from bench.common import (
    DB_URL,
    Options,
    add_email_transport,
    cli,
    free_port,
    fresh_database,
    new_app_key,
    processes,
    spawn,
    wait_http,
)
from bench.cpu import CpuMeter
from bench.results import Figure

SESSIONS = 2000
QUICK_SESSIONS = 200
RECIPIENTS = 2
EVENTS = RECIPIENTS + 1
TIMEOUT_S = 600.0


async def submit(http: aiohttp.ClientSession, url: str, hook: str, n: int, trial: int) -> None:
    room = asyncio.Semaphore(20)

    async def one(i: int) -> None:
        body = {"transport": {"type": "email", "subject": "Bench", "message": "Hello"},
                "audience": [f"t{trial}r{r}s{i}@example{i % 97}.com" for r in range(RECIPIENTS)],
                "options": {"trigger": "immediate", "webhookUrl": hook}}
        async with room, http.post(url + "/v1/sessions", data=json.dumps(body)) as r:
            assert r.status == 201, await r.text()

    await asyncio.gather(*(one(i) for i in range(n)))


async def sink_count(http: aiohttp.ClientSession, sink: str) -> int:
    async with http.get(sink + "/_count") as r:
        got: int = (await r.json())["count"]
    return got


async def trial(http: aiohttp.ClientSession, url: str, sink: str, worker: int, n: int,
                number: int) -> dict[str, Any]:
    db = await asyncpg.connect(DB_URL)
    try:
        await db.execute("TRUNCATE webhook_attempts, webhook_events, attempts, deliveries,"
                         " sessions CASCADE")
        events_before = await sink_count(http, sink)
        os.kill(worker, signal.SIGSTOP)
        try:
            await submit(http, url, sink + "/hook", n, number)
        finally:
            meter = CpuMeter({"worker": "hub.cli.main worker", "postgres": "postgres"})
            start = time.perf_counter()
            os.kill(worker, signal.SIGCONT)
        while (await db.fetchval("SELECT count(*) FROM sessions WHERE status <> 'completed'")
               or await sink_count(http, sink) - events_before < n * EVENTS):
            assert time.perf_counter() - start < TIMEOUT_S, "the worker did not finish in time"
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - start
        cpu = meter.per_unit_ms(n)
        counts = dict(await db.fetch("SELECT status, count(*) FROM deliveries GROUP BY 1"))
        attempts = await db.fetchval("SELECT count(*) FROM attempts")
        events = dict(await db.fetch("SELECT status, count(*) FROM webhook_events GROUP BY 1"))
        sent = await db.fetchval("SELECT count(*) FROM webhook_attempts")
    finally:
        await db.close()
    assert counts == {"delivered": n * RECIPIENTS}, counts
    assert attempts == n * RECIPIENTS, f"{attempts} attempts for {n * RECIPIENTS} deliveries"
    assert events == {"delivered": n * EVENTS} and sent == n * EVENTS, (events, sent)
    assert await sink_count(http, sink) - events_before == n * EVENTS, "an event came twice"
    return {"perS": n / seconds, "workerMs": cpu["worker"], "postgresMs": cpu["postgres"]}


async def main(opts: Options) -> list[Figure]:
    n = opts.pick(SESSIONS, QUICK_SESSIONS)
    await fresh_database()
    key = await new_app_key()
    port, smtp_port, sink_port = free_port(), free_port(), free_port()
    url, sink = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sink_port}"
    procs = [spawn("hub.cli.main", "api", HUB_API_PORT=str(port)),
             spawn("hub.cli.main", "worker"),
             spawn("hub.dev.smtp", str(smtp_port)),
             spawn("bench.sink", str(sink_port))]
    runs = []
    with processes(*procs):
        wait_http(url + "/healthz")
        wait_http(sink + "/_count")
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(headers=headers) as http:
            await add_email_transport(http, url, smtp_port)
            for number in range(opts.trials):
                runs.append(await trial(http, url, sink, procs[1].pid, n, number))
                print(f"  trial {number + 1}: {runs[-1]}", flush=True)
    note = (f"{n} immediate email sessions of {RECIPIENTS} recipients with webhookUrl,"
            " submitted with the worker paused, then drained by one worker to the last"
            " webhook received")
    return [
        Figure("worker.small_sessions", "sessions/s", [r["perS"] for r in runs], ">=", None,
               note=note),
        Figure("worker.small_sessions.worker_cpu", "ms/session",
               [r["workerMs"] for r in runs], "<=", None),
        Figure("worker.small_sessions.postgres_cpu", "ms/session",
               [r["postgresMs"] for r in runs], "<=", None),
    ]


if __name__ == "__main__":
    cli(main, __doc__)
