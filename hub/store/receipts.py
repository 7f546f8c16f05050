"""Provider receipts: a status callback (or its absence past the deadline) decides the
fate of a delivery that was accepted by the provider."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import asyncpg

from hub import constants as c
from hub.jobs.retry import decide, when_cancelled
from hub.store import outbox, sessions
from hub.store.deliveries import RECEIPT_OWNER
from hub.transports.base import Result

NO_RECEIPT = "the provider sent no delivery receipt before the deadline; assumed delivered"


async def apply(conn: asyncpg.Connection, provider_ref: str, result: Result,
                report_base: str) -> str:
    """'applied', 'unknown' (no such message) or 'ignored' (already final, or a duplicate)."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT d.id, d.status, d.claimed_by, d.tries, d.detail, d.session_id, s.retries,"
            " s.retry_intervals_s, s.status AS session_status"
            " FROM deliveries d JOIN sessions s ON s.id = d.session_id"
            " WHERE d.provider_ref = $1 FOR UPDATE OF d", provider_ref)
        if row is None:
            return "unknown"
        if row["status"] != c.D_IN_PROGRESS or row["claimed_by"] != RECEIPT_OWNER:
            return "ignored"
        await _settle(conn, row, result)
        await sessions.finish_if_done(conn, row["session_id"], report_base=report_base)
    return "applied"


async def _settle(conn: asyncpg.Connection, row: Any, result: Result) -> None:
    decision = decide(result, tries=row["tries"], retries=row["retries"],
                      intervals_s=list(row["retry_intervals_s"]))
    if row["session_status"] == c.S_CANCELLED:
        decision = when_cancelled(decision)
    detail = {**(row["detail"] or {}), **result.detail}
    result = replace(result, detail=detail)
    await conn.execute(
        "UPDATE attempts SET outcome = $2, detail = $3, error = $4, ended_at = now()"
        " WHERE delivery_id = $1 AND attempt = (SELECT attempts FROM deliveries WHERE id = $1)",
        row["id"], result.outcome, detail, result.error)
    await conn.execute(
        "UPDATE deliveries SET status = $2, outcome = $3, detail = $4, error = $5,"
        " next_attempt_at = CASE WHEN $2 = 'retry_scheduled'"
        "   THEN now() + make_interval(secs => $6) END,"
        " lease_until = NULL, claimed_by = NULL WHERE id = $1",
        row["id"], decision.status, result.outcome, detail, result.error,
        decision.delay_s or 0.0)
    if decision.status in c.FINAL_DELIVERY_STATUSES:
        await outbox.add_delivery_events(conn, [row["id"]])


async def expire(conn: asyncpg.Connection, report_base: str) -> int:
    """Deliveries whose receipt deadline passed: the timeout says delivered (unconfirmed)."""
    refs = await conn.fetch(
        "SELECT provider_ref FROM deliveries WHERE status = 'in_progress' AND claimed_by = $1"
        " AND lease_until < now() LIMIT 1000", RECEIPT_OWNER)
    done = 0
    for r in refs:
        result = Result("sent", delivered=True, detail={"receipt": "none", "note": NO_RECEIPT})
        if await apply(conn, r["provider_ref"], result, report_base) == "applied":
            done += 1
    return done
