"""`/v1/usage` stays bounded on large tables: with another app's 200,000 deliveries and
attempts in the same days, the app's figures come from index lookups of its own sessions,
deliveries and attempts; no table is read whole."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import asyncpg

from hub.store import usage
from hub.store.apps import create_app


async def seed(db: asyncpg.Pool, app_id: uuid.UUID, sessions: int, per: int,
               start: dt.datetime) -> None:
    t = uuid.uuid4()
    await db.execute("INSERT INTO transports (id, app_id, name, type, provider, config, secrets)"
                     " VALUES ($1, $2, $3, 'email', 'smtp', '{}', '{}')", t, app_id, str(t))
    await db.execute("""
      WITH s AS (INSERT INTO sessions (id, app_id, transport_id, transport_type, status, trigger,
                 instruction, retries, retry_intervals_s, audience_count, duplicates_removed,
                 created_at, ended_at)
                 SELECT gen_random_uuid(), $1, $2, 'email', 'completed', 'immediate', '{}', 0,
                        '{}', $4, 0, $3::timestamptz + i * interval '1 s',
                        $3::timestamptz + i * interval '1 s' + interval '1 min'
                 FROM generate_series(1, $5) i RETURNING id, created_at),
      d AS (INSERT INTO deliveries (session_id, address, status, attempts, final_at)
            SELECT s.id, 'a' || j || '@x.test', 'delivered', 1, s.created_at + interval '30 s'
            FROM s, generate_series(1, $4) j RETURNING id, final_at)
      INSERT INTO attempts (id, delivery_id, attempt, started_at, ended_at, outcome)
      SELECT gen_random_uuid(), d.id, 1, d.final_at - interval '20 s', d.final_at, 'delivered'
      FROM d""", app_id, t, start, per, sessions)


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += nodes(child)
    return found


async def test_usage_reads_only_the_apps_rows_through_indexes(db: asyncpg.Pool) -> None:
    mine, other = await create_app(db, "mine"), await create_app(db, "other")
    day = dt.datetime(2026, 5, 4, 8, tzinfo=dt.UTC)
    await seed(db, other.app_id, 2000, 100, day)                       # 200,000 rows each
    await seed(db, mine.app_id, 3000, 5, day - dt.timedelta(days=400))  # its old history
    await seed(db, mine.app_id, 10, 20, day)
    await db.execute("ANALYZE sessions, deliveries, attempts")
    first, last = day.date() - dt.timedelta(days=29), day.date()
    items = await usage.daily(db, mine.app_id, first, last)
    assert [(i["date"], i["sessions"], i["recipients"], i["attempts"], i["delivered"])
            for i in items] == [("2026-05-04", 10, 200, 200, 200)]
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL jit = off")
        raw = await conn.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + usage.DAILY_SQL, mine.app_id,
            usage.day_start(first), usage.day_start(last + dt.timedelta(days=1)))
    plan = nodes((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"])
    whole = [n["Relation Name"] for n in plan if n["Node Type"] == "Seq Scan"
             and n["Relation Name"] in ("sessions", "deliveries", "attempts")]
    assert whole == []
    # The rows read from each table are the app's own recent ones, not the other app's.
    read: dict[str, int] = {}
    for n in plan:
        if "Relation Name" in n:
            read[n["Relation Name"]] = read.get(n["Relation Name"], 0) + \
                n["Actual Rows"] * n["Actual Loops"]
    assert read.get("deliveries", 0) <= 200 and read.get("attempts", 0) <= 200, read
    assert read.get("sessions", 0) <= 10, read
