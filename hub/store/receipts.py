"""Provider receipts: a status callback (or its absence past the deadline) decides the
fate of a delivery the provider accepted. Receipts are applied in batches (callbacks come
in floods): one transaction settles many deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from hub import constants as c
from hub.retry import decide, when_cancelled
from hub.store import outbox, sessions
from hub.store.claims import RECEIPT_OWNER
from hub.transports.base import Result

NO_RECEIPT = "the provider sent no delivery receipt before the deadline; assumed delivered"

SELECT_SQL = """
SELECT d.id, d.provider_ref, d.status, d.claimed_by, d.tries, d.attempts, d.detail,
       d.session_id, s.retries, s.retry_intervals_s, s.status AS session_status
FROM deliveries d JOIN sessions s ON s.id = d.session_id
WHERE d.provider_ref = ANY($1::text[])
ORDER BY d.id
FOR UPDATE OF d
"""


async def apply_many(conn: asyncpg.Connection, receipts: Sequence[tuple[str, Result]],
                     report_base: str) -> dict[str, str]:
    """Settle deliveries by provider message id → {ref: 'applied' | 'unknown' | 'ignored'}
    ('ignored': already final, or a duplicate callback)."""
    wanted = dict(receipts)  # the last word per message wins
    outcome = {ref: "unknown" for ref in wanted}
    async with conn.transaction():
        rows = await conn.fetch(SELECT_SQL, list(wanted))
        settle = []
        for row in rows:
            if row["status"] != c.D_IN_PROGRESS or row["claimed_by"] != RECEIPT_OWNER:
                outcome[row["provider_ref"]] = "ignored"
                continue
            settle.append((row, wanted[row["provider_ref"]]))
            outcome[row["provider_ref"]] = "applied"
        await _settle(conn, settle)
        for session_id in {row["session_id"] for row, _ in settle}:
            await sessions.finish_if_done(conn, session_id, report_base=report_base)
    return outcome


async def _settle(conn: asyncpg.Connection, items: list[tuple[Any, Result]]) -> None:
    if not items:
        return
    now = datetime.now(UTC)
    cols: dict[str, list[Any]] = {k: [] for k in (
        "id", "att", "status", "outcome", "detail", "error", "next")}
    final = []
    for row, result in items:
        decision = decide(result, tries=row["tries"], retries=row["retries"],
                          intervals_s=list(row["retry_intervals_s"]))
        if row["session_status"] == c.S_CANCELLED:
            decision = when_cancelled(decision)
        cols["id"].append(row["id"])
        cols["att"].append(row["attempts"])
        cols["status"].append(decision.status)
        cols["outcome"].append(result.outcome)
        cols["detail"].append({**(row["detail"] or {}), **result.detail})
        cols["error"].append(result.error)
        cols["next"].append(now + timedelta(seconds=decision.delay_s or 0.0)
                            if decision.status == c.D_RETRY else None)
        if decision.status in c.FINAL_DELIVERY_STATUSES:
            final.append(row["id"])
    await conn.execute(
        "UPDATE attempts a SET outcome = u.outcome, detail = u.detail, error = u.error,"
        " ended_at = now()"
        " FROM unnest($1::bigint[], $2::int[], $3::text[], $4::jsonb[], $5::text[])"
        " AS u(id, att, outcome, detail, error)"
        " WHERE a.delivery_id = u.id AND a.attempt = u.att",
        cols["id"], cols["att"], cols["outcome"], cols["detail"], cols["error"])
    await conn.execute(
        "UPDATE deliveries d SET status = u.status, outcome = u.outcome, detail = u.detail,"
        " error = u.error, next_attempt_at = u.next, lease_until = NULL, claimed_by = NULL"
        " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::jsonb[], $5::text[],"
        " $6::timestamptz[]) AS u(id, status, outcome, detail, error, next) WHERE d.id = u.id",
        cols["id"], cols["status"], cols["outcome"], cols["detail"], cols["error"], cols["next"])
    await outbox.add_delivery_events(conn, final)


async def expire(conn: asyncpg.Connection, report_base: str) -> int:
    """Deliveries whose receipt deadline passed: the timeout says delivered (unconfirmed)."""
    refs = await conn.fetch(
        "SELECT provider_ref FROM deliveries WHERE status = 'in_progress' AND claimed_by = $1"
        " AND lease_until < now() LIMIT 1000", RECEIPT_OWNER)
    result = Result("sent", delivered=True, detail={"receipt": "none", "note": NO_RECEIPT})
    done = await apply_many(conn, [(r["provider_ref"], result) for r in refs], report_base)
    return sum(1 for v in done.values() if v == "applied")
