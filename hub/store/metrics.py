"""Counts for `/metrics`, kept by the triggers of schema 008 (no scan of deliveries)."""

from __future__ import annotations

from dataclasses import dataclass

from hub.store.db import Pool

FOLD_LOCK_ID = 0x4855_4D  # advisory lock of the reader that folds deltas ("HUM")

_FOLD = """
WITH moved AS (DELETE FROM metric_deltas RETURNING metric, transport, status, n)
INSERT INTO metric_counts AS c (metric, transport, status, n)
SELECT metric, transport, status, sum(n) FROM moved GROUP BY 1, 2, 3
ON CONFLICT (metric, transport, status) DO UPDATE SET n = c.n + excluded.n
"""

_READ = """
SELECT metric, transport, status, sum(n)::bigint AS n
FROM (SELECT metric, transport, status, n FROM metric_counts
      UNION ALL SELECT metric, transport, status, n FROM metric_deltas) x
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""

# Bounded twice: the partial index webhook_events_due holds pending events only, and the
# count stops at PENDING_CAP (a backlog that large is an alert either way).
PENDING_CAP = 100_000
_PENDING = ("SELECT count(*) FROM (SELECT 1 FROM webhook_events WHERE status = 'pending'"
            f" LIMIT {PENDING_CAP}) x")
SCRAPE_QUERIES = (_FOLD, _READ, _PENDING)  # everything a scrape runs (tests EXPLAIN them)


@dataclass(frozen=True)
class Counts:
    deliveries: dict[tuple[str, str], int]   # (transport type, status) -> n
    sessions: dict[str, int]                 # status -> n
    webhooks_pending: int


async def read(pool: Pool) -> Counts:
    """Fold the deltas written since the last read (one reader at a time; the others read
    counts plus deltas), then read the counts: a few rows, whatever the table sizes."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            if await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", FOLD_LOCK_ID):
                await conn.execute(_FOLD)
        rows = await conn.fetch(_READ)
        pending = await conn.fetchval(_PENDING)
    deliveries: dict[tuple[str, str], int] = {}
    sessions: dict[str, int] = {}
    for r in rows:
        if r["metric"] == "deliveries":
            deliveries[(r["transport"], r["status"])] = r["n"]
        elif r["metric"] == "sessions":
            sessions[r["status"]] = sessions.get(r["status"], 0) + r["n"]
    return Counts(deliveries, sessions, int(pending))
