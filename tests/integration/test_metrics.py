"""`/metrics`: cheap under a crowd of scrapers, exact to the records, optionally behind a
token, label values escaped as the Prometheus text format says."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from hub.jobs.queueing import VOICE_ACTIVE_KEY
from hub.store import metrics as metric_counts
from tests.conftest import Procs
from tests.helpers import free_port

pytestmark = pytest.mark.e2e

STATUSES = ("pending", "in_progress", "retry_scheduled", "delivered", "failed", "cancelled")


async def seed(db: asyncpg.Pool, app_id: uuid.UUID, deliveries: int) -> None:
    """Sessions of three transport types and `deliveries` rows spread over every status,
    loaded by COPY as the hub itself loads an audience."""
    async with db.acquire() as conn, conn.transaction():
        sessions = []
        for i, type_ in enumerate(("email", "sms", "voice")):
            tid, sid = uuid.uuid4(), uuid.uuid4()
            await conn.execute(
                "INSERT INTO transports (id, app_id, name, type, provider, config, secrets)"
                " VALUES ($1, $2, $3, $4, 'x', '{}', '{}')", tid, app_id, f"t{i}", type_)
            await conn.execute(
                "INSERT INTO sessions (id, app_id, transport_id, transport_type, status, trigger,"
                " instruction, retries, retry_intervals_s, audience_count, duplicates_removed)"
                " VALUES ($1, $2, $3, $4, 'running', 'immediate', '{}', 0, '{}', $5, 0)",
                sid, app_id, tid, type_, deliveries // 3)
            sessions.append(sid)
        await conn.copy_records_to_table(
            "deliveries", columns=["session_id", "address", "status"],
            records=((sessions[n % 3], f"+1415{n:07d}", STATUSES[n % len(STATUSES)])
                     for n in range(deliveries)))


async def scrape(http: aiohttp.ClientSession, base: str, token: str | None = None
                 ) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(f"{base}/metrics", headers=headers) as resp:
        return resp.status, await resp.text()


def samples(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


async def expected_deliveries(db: asyncpg.Pool) -> dict[str, float]:
    rows = await db.fetch(
        "SELECT s.transport_type AS t, d.status, count(*) AS n FROM deliveries d"
        " JOIN sessions s ON s.id = d.session_id GROUP BY 1, 2")
    return {f'hub_deliveries_total{{transport="{r["t"]}",status="{r["status"]}"}}': r["n"]
            for r in rows}


def nonzero(found: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in found.items() if v}


@pytest.mark.timeout(180)
async def test_scrapers_do_not_slow_authenticated_requests(
    api_server: str, db: asyncpg.Pool, make_app: Any, http: aiohttp.ClientSession
) -> None:
    app = await make_app("scraped")
    await seed(db, app.app_id, 200_000)
    auth = {"Authorization": f"Bearer {app.api_key}"}

    async def timed_get() -> float:
        start = time.perf_counter()
        async with http.get(f"{api_server}/v1/sessions?limit=20", headers=auth) as resp:
            assert resp.status == 200
            await resp.read()
        return time.perf_counter() - start

    idle = [await timed_get() for _ in range(20)]
    stop = time.monotonic() + 10
    scrapes: list[float] = []

    async def scraper() -> None:
        while time.monotonic() < stop:
            start = time.perf_counter()
            status, _ = await scrape(http, api_server)
            assert status == 200
            scrapes.append(time.perf_counter() - start)

    async def user() -> list[float]:
        got = []
        while time.monotonic() < stop:
            got.append(await timed_get())
        return got

    *_, loaded = await asyncio.gather(*(scraper() for _ in range(30)), user())
    p50_idle, p50 = statistics.median(idle), statistics.median(loaded)
    p90 = statistics.quantiles(loaded, n=10)[-1]
    print(f"\nGET /v1/sessions idle p50 {p50_idle * 1000:.1f} ms; under 30 scrapers"
          f" p50 {p50 * 1000:.1f} ms p90 {p90 * 1000:.1f} ms ({len(loaded)} requests);"
          f" {len(scrapes)} scrapes, scrape p50 {statistics.median(scrapes) * 1000:.1f} ms")
    assert p50 < 0.100, f"authenticated p50 {p50 * 1000:.0f} ms under scraping"


async def test_metrics_are_exact_and_follow_every_change(
    db: asyncpg.Pool, make_app: Any, procs: Procs, http: aiohttp.ClientSession
) -> None:
    app = await make_app("counted")
    await seed(db, app.app_id, 6_000)
    port = free_port()
    procs.api(port, HUB_METRICS_CACHE_S="0")
    base = f"http://127.0.0.1:{port}"

    async def check() -> str:
        status, text = await scrape(http, base)
        assert status == 200
        assert nonzero(samples(text, "hub_deliveries_total")) == await expected_deliveries(db)
        sessions = {f'hub_sessions{{status="{r["status"]}"}}': r["n"] for r in await db.fetch(
            "SELECT status, count(*) AS n FROM sessions GROUP BY 1")}
        assert nonzero(samples(text, "hub_sessions")) == sessions
        return text

    await check()
    # Batch updates as the engine makes them, a status change that is no change, a delete.
    await db.execute("UPDATE deliveries SET status = 'delivered' WHERE status = 'pending'")
    await db.execute("UPDATE deliveries SET error = 'x' WHERE status = 'failed'")
    await db.execute("UPDATE sessions SET status = 'completed' WHERE transport_type = 'sms'")
    await db.execute("DELETE FROM deliveries WHERE status = 'cancelled' AND address LIKE '%1'")
    text = await check()
    assert 'hub_deliveries_total{transport="email",status="pending"} 0' in text
    # A session deleted with its deliveries (cascade) takes its counts with it.
    await db.execute("DELETE FROM sessions WHERE transport_type = 'voice'")
    await check()


async def test_metrics_token(
    db: asyncpg.Pool, procs: Procs, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    procs.api(port, HUB_METRICS_TOKEN="scrape-secret")
    base = f"http://127.0.0.1:{port}"
    status, _ = await scrape(http, base)
    assert status == 401
    status, _ = await scrape(http, base, "wrong")
    assert status == 401
    status, text = await scrape(http, base, "scrape-secret")
    assert status == 200 and "# TYPE hub_deliveries_total gauge" in text
    async with http.get(f"{base}/healthz") as resp:
        assert resp.status == 200  # only /metrics is behind the token


async def test_label_values_are_escaped(
    api_server: str, db: asyncpg.Pool, redis: Any, http: aiohttp.ClientSession
) -> None:
    # What `hub voice` records per trunk; a trunk name is operator text.
    redis.hset(f"{VOICE_ACTIVE_KEY}:ctl-1", 'odd"trunk\\x\nnext', 2)
    deadline = time.monotonic() + 10
    while True:
        status, text = await scrape(http, api_server)
        assert status == 200
        if "odd" in text or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert 'hub_calls_active{trunk="odd\\"trunk\\\\x\\nnext"} 2' in text.splitlines()
    assert all(not line or line.startswith(("#", "hub_", "process_")) for line in text.splitlines())


async def test_scrapes_never_scan_deliveries_attempts_or_the_outbox(
    db: asyncpg.Pool, make_app: Any, procs: Procs, http: aiohttp.ClientSession
) -> None:
    """EXPLAIN every query a scrape runs on big tables; then scrape the real API and see
    PostgreSQL's own counters: not one scan of deliveries or attempts."""
    app = await make_app("big")
    await seed(db, app.app_id, 60_000)
    await db.execute(
        "INSERT INTO attempts (id, delivery_id, attempt, outcome)"
        " SELECT gen_random_uuid(), id, 1, 'delivered' FROM deliveries")
    await db.execute(
        "INSERT INTO webhook_events (id, app_id, url, type, payload, status)"
        " SELECT gen_random_uuid(), $1, 'http://127.0.0.1/x', 'delivery.completed', '{}',"
        " CASE WHEN n % 1000 = 0 THEN 'pending' ELSE 'delivered' END"
        " FROM generate_series(1, 30000) n", app.app_id)
    await db.execute("ANALYZE deliveries; ANALYZE attempts; ANALYZE webhook_events")
    async with db.acquire() as conn:
        for query in metric_counts.SCRAPE_QUERIES:
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {query}"))
            assert "Seq Scan on webhook_events" not in plan, plan
            assert "deliveries" not in plan and "attempts" not in plan, plan

    port = free_port()
    procs.api(port, HUB_METRICS_CACHE_S="0")
    stats = ("SELECT relname, coalesce(seq_scan, 0) + coalesce(idx_scan, 0) AS n"
             " FROM pg_stat_user_tables WHERE relname IN ('deliveries', 'attempts')")

    async def scans() -> dict[str, int]:
        async with db.acquire() as conn:
            await conn.execute("SELECT pg_stat_force_next_flush()")
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            return {r["relname"]: r["n"] for r in await conn.fetch(stats)}

    await asyncio.sleep(1.5)
    before = await scans()
    for _ in range(20):
        status, text = await scrape(http, f"http://127.0.0.1:{port}")
        assert status == 200 and "hub_deliveries_total" in text
    procs.stop_all()  # its backends exit, and a backend flushes its counters as it exits
    await asyncio.sleep(11)  # (or after PostgreSQL's 10 s idle flush at the latest)
    assert await scans() == before
