"""Deliveries and attempts: claiming with a lease, recording results, reading them back."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from hub import constants as c
from hub.jobs.retry import Decision
from hub.store import outbox, pagination
from hub.store.db import Pool
from hub.transports.base import Recipient, Result

INTERRUPTED_ERROR = "the worker stopped during this attempt; its outcome is unknown"
RECEIPT_OWNER = "receipt"  # claimed_by of deliveries waiting for a provider's status callback

def claim_sql(scope: str) -> str:
    """The claim statement for deliveries matching `scope` (SQL over `d` and `s`, with
    $1 its parameter): lease up to $2 due ones for $3 seconds, owner $5; a delivery whose
    lease expired has its open attempt closed as interrupted ($4)."""
    return f"""
WITH due AS (
    SELECT d.id FROM deliveries d JOIN sessions s ON s.id = d.session_id
    WHERE {scope}
      AND ((d.status IN ('pending', 'retry_scheduled') AND d.next_attempt_at <= now())
           OR (d.status = 'in_progress' AND d.lease_until < now()
               AND d.claimed_by IS DISTINCT FROM 'receipt'))
    ORDER BY d.next_attempt_at NULLS FIRST, d.id
    LIMIT $2
    FOR UPDATE OF d SKIP LOCKED
), lost AS (
    UPDATE attempts a SET ended_at = now(), outcome = 'interrupted', error = $4
    FROM due WHERE a.delivery_id = due.id AND a.ended_at IS NULL
    RETURNING a.delivery_id
)
UPDATE deliveries d
SET status = 'in_progress', attempts = d.attempts + 1, last_attempt_at = now(),
    next_attempt_at = NULL, lease_until = now() + make_interval(secs => $3), claimed_by = $5
FROM due WHERE d.id = due.id
RETURNING d.id, d.address, d.attempts, d.tries, d.session_id, d.role
"""


CLAIM_SQL = claim_sql("d.session_id = $1 AND s.status IN ('queued', 'running')")


@dataclass(frozen=True)
class Claimed:
    recipient: Recipient
    tries_before: int


async def claim(
    conn: asyncpg.Connection, session_id: uuid.UUID, limit: int, lease_s: float
) -> list[Claimed]:
    """Lease up to `limit` due deliveries and open an attempt row for each."""
    async with conn.transaction():
        rows = await conn.fetch(CLAIM_SQL, session_id, limit, lease_s, INTERRUPTED_ERROR, None)
        return await open_attempts(conn, rows)


async def open_attempts(conn: asyncpg.Connection, rows: Sequence[Any]) -> list[Claimed]:
    """Insert one attempt row per freshly claimed delivery (inside the claim transaction)."""
    if not rows:
        return []
    ids = [uuid.uuid4() for _ in rows]
    await conn.execute(
        "INSERT INTO attempts (id, delivery_id, attempt)"
        " SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::int[])",
        ids, [r["id"] for r in rows], [r["attempts"] for r in rows],
    )
    return [
        Claimed(Recipient(r["id"], str(aid), r["attempts"], r["address"], r["role"]), r["tries"])
        for r, aid in zip(rows, ids, strict=True)
    ]


@dataclass(frozen=True)
class Outcome:
    claimed: Claimed
    result: Result
    decision: Decision
    ended_at: datetime


async def record(conn: asyncpg.Connection, outcomes: Sequence[Outcome]) -> None:
    """Close the attempts and move their deliveries on, in one transaction."""
    if not outcomes:
        return
    cols: dict[str, list[Any]] = {k: [] for k in (
        "aid", "did", "att", "outcome", "detail", "ref", "error", "ended", "status", "next",
        "duration", "spend")}
    for o in outcomes:
        r, res = o.claimed.recipient, o.result
        cols["aid"].append(uuid.UUID(r.attempt_id))
        cols["did"].append(r.delivery_id)
        cols["att"].append(r.attempt)
        cols["outcome"].append(res.outcome)
        cols["detail"].append(res.detail)
        cols["ref"].append(res.provider_ref)
        cols["error"].append(res.error)
        cols["ended"].append(o.ended_at)
        cols["status"].append(o.decision.status)
        delay = o.decision.delay_s
        cols["next"].append(o.ended_at + timedelta(seconds=delay) if delay is not None else None)
        cols["duration"].append(res.detail.get("talkS") if res.outcome == "answered" else None)
        cols["spend"].append(1 if o.decision.spends_try else 0)
    async with conn.transaction():
        await conn.execute(
            "UPDATE attempts a SET ended_at = u.ended, outcome = u.outcome, detail = u.detail,"
            " provider_ref = u.ref, error = u.error"
            " FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::text[],"
            " $6::timestamptz[]) AS u(id, outcome, detail, ref, error, ended) WHERE a.id = u.id",
            cols["aid"], cols["outcome"], cols["detail"], cols["ref"], cols["error"], cols["ended"],
        )
        # A delivery waiting for the provider's receipt stays in_progress, owned by
        # RECEIPT_OWNER, with the receipt deadline as its lease.
        rows = await conn.fetch(
            "UPDATE deliveries d SET status = u.status, tries = d.tries + u.spend,"
            " outcome = u.outcome, detail = u.detail, provider_ref = u.ref, error = u.error,"
            " next_attempt_at = CASE WHEN u.status = 'in_progress' THEN NULL ELSE u.next END,"
            " lease_until = CASE WHEN u.status = 'in_progress' THEN u.next END,"
            " claimed_by = CASE WHEN u.status = 'in_progress' THEN $11 END,"
            " duration_s = coalesce(u.duration, d.duration_s)"
            " FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::jsonb[],"
            " $6::text[], $7::text[], $8::timestamptz[], $9::float8[], $10::int[])"
            " AS u(id, att, status, outcome, detail, ref, error, next, duration, spend)"
            " WHERE d.id = u.id AND d.attempts = u.att AND d.status = 'in_progress'"
            " RETURNING d.id, d.status",
            cols["did"], cols["att"], cols["status"], cols["outcome"], cols["detail"],
            cols["ref"], cols["error"], cols["next"], cols["duration"], cols["spend"],
            RECEIPT_OWNER,
        )
        final = [r["id"] for r in rows if r["status"] in c.FINAL_DELIVERY_STATUSES]
        await outbox.add_delivery_events(conn, final)
        await _undo_unattempted(conn, [o for o in outcomes if not o.result.attempted])


async def _undo_unattempted(conn: asyncpg.Connection, outcomes: Sequence[Outcome]) -> None:
    """Nothing was sent (deferred before the provider call): no attempt to show."""
    if not outcomes:
        return
    await conn.execute("DELETE FROM attempts WHERE id = ANY($1::uuid[])",
                       [uuid.UUID(o.claimed.recipient.attempt_id) for o in outcomes])
    await conn.execute(
        "UPDATE deliveries SET attempts = attempts - 1, outcome = NULL"
        " WHERE id = ANY($1::bigint[])", [o.claimed.recipient.delivery_id for o in outcomes])


async def fail_all(conn: asyncpg.Connection, session_id: uuid.UUID, error: str) -> int:
    """Fail every delivery with work left (a session-level problem such as unusable media)."""
    async with conn.transaction():
        rows = await conn.fetch(
            "UPDATE deliveries SET status = 'failed', outcome = 'failed', error = $2,"
            " next_attempt_at = NULL, lease_until = NULL"
            " WHERE session_id = $1 AND status IN ('pending', 'retry_scheduled', 'in_progress')"
            " RETURNING id", session_id, error,
        )
        await conn.execute(
            "UPDATE attempts a SET ended_at = now(), outcome = 'failed', error = $2"
            " FROM deliveries d WHERE a.delivery_id = d.id AND d.session_id = $1"
            " AND a.ended_at IS NULL", session_id, error,
        )
        await outbox.add_delivery_events(conn, [r["id"] for r in rows])
    return len(rows)


async def next_due(conn: asyncpg.Connection, session_id: uuid.UUID) -> datetime | None:
    due: datetime | None = await conn.fetchval(
        "SELECT min(coalesce(next_attempt_at, lease_until)) FROM deliveries WHERE session_id = $1"
        " AND (status IN ('pending', 'retry_scheduled') OR status = 'in_progress')", session_id
    )
    return due


def view(row: Any) -> dict[str, Any]:
    return {
        "address": row["address"],
        "role": row["role"],
        "status": row["status"],
        "attempts": row["attempts"],
        "outcome": row["outcome"],
        "detail": row["detail"],
        "durationS": row["duration_s"],
        "providerRef": row["provider_ref"],
        "lastAttemptAt": row["last_attempt_at"].isoformat() if row["last_attempt_at"] else None,
        "nextAttemptAt": row["next_attempt_at"].isoformat() if row["next_attempt_at"] else None,
        "error": row["error"],
    }


async def list_(
    pool: Pool, session_id: uuid.UUID, *, limit: int, cursor: str | None,
    status: str | None, address: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    where, args = ["session_id = $1"], list[Any]([session_id])
    if status:
        args.append(status)
        where.append(f"status = ${len(args)}")
    if address:
        args.append(address)
        where.append(f"address = ${len(args)}")
    if cursor:
        args.append(int(pagination.decode(cursor, 1)[0]))
        where.append(f"id > ${len(args)}")
    args.append(limit + 1)
    rows = await pool.fetch(
        f"SELECT * FROM deliveries WHERE {' AND '.join(where)} ORDER BY id LIMIT ${len(args)}",
        *args,
    )
    page, nxt = pagination.page_of(list(rows), limit, lambda r: [r["id"]])
    return [view(r) for r in page], nxt


async def attempts(pool: Pool, session_id: uuid.UUID, address: str) -> list[dict[str, Any]] | None:
    delivery_id = await pool.fetchval(
        "SELECT id FROM deliveries WHERE session_id = $1 AND address = $2", session_id, address
    )
    if delivery_id is None:
        return None
    rows = await pool.fetch(
        "SELECT * FROM attempts WHERE delivery_id = $1 ORDER BY attempt", delivery_id
    )
    return [
        {
            "attempt": r["attempt"],
            "startedAt": r["started_at"].isoformat(),
            "endedAt": r["ended_at"].isoformat() if r["ended_at"] else None,
            "outcome": r["outcome"],
            "detail": r["detail"],
            "providerRef": r["provider_ref"],
            "error": r["error"],
        }
        for r in rows
    ]
