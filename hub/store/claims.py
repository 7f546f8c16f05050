"""Claims on deliveries: a lease (`lease_until`) held by one owner (`claimed_by`).

A worker's job or a voice controller claims due deliveries (`FOR UPDATE SKIP LOCKED`),
opening one attempt row each. While it holds them it renews their lease; what it will not
send it gives back. Every write after the claim is guarded by the owner and the attempt
number, so a claim that was taken over (its lease expired) can never undo or overwrite
the new owner's attempt. A delivery whose lease keeps expiring (its worker keeps dying)
is given up after MAX_INTERRUPTIONS such attempts in a row: `failed`, with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from hub.results import Recipient
from hub.store import outbox

INTERRUPTED_ERROR = "the worker stopped during this attempt; its outcome is unknown"
RECEIPT_OWNER = "receipt"  # claimed_by of deliveries waiting for a provider's status callback
MAX_INTERRUPTIONS = 3
GAVE_UP_ERROR = (f"the worker stopped during {MAX_INTERRUPTIONS} attempts in a row"
                 " (each outcome unknown); not tried again")

_EXPIRED = ("d.status = 'in_progress' AND d.lease_until < now()"
            " AND d.claimed_by IS DISTINCT FROM 'receipt'")


def claim_sql(scope: str, *, with_attempts: bool = False) -> str:
    """The claim statement for deliveries matching `scope` (SQL over `d` and `s`, with
    $1 its parameter): lease up to $2 due ones for $3 seconds, owner $5; a delivery whose
    lease expired has its open attempt closed as interrupted ($4). `with_attempts`: the
    statement also opens each claimed delivery's attempt row (answered as `attempt_id`),
    so that a claim is one statement, not a transaction of two.

    Interrupted claims go first (oldest lease first), then the earliest due, each read in
    the order of its index (`deliveries_session_working`, `deliveries_session_due`) up to
    the limit: a claim reads what it takes, whatever the size of the session and however
    many of its messages wait for a receipt. The rows are then found by id (`= ANY`),
    never by a join whose plan could read the table, and answered in claim order."""
    return f"""
WITH lapsed AS (
    SELECT d.id FROM deliveries d JOIN sessions s ON s.id = d.session_id
    WHERE {scope} AND {_EXPIRED} AND d.interruptions < {MAX_INTERRUPTIONS - 1}
    ORDER BY d.lease_until, d.id
    LIMIT $2
    FOR UPDATE OF d SKIP LOCKED
), fresh AS (
    SELECT d.id FROM deliveries d JOIN sessions s ON s.id = d.session_id
    WHERE {scope} AND d.status IN ('pending', 'retry_scheduled') AND d.next_attempt_at <= now()
    ORDER BY d.next_attempt_at, d.id
    LIMIT $2
    FOR UPDATE OF d SKIP LOCKED
), picked AS MATERIALIZED (  -- `fresh` is read only as far as `lapsed` leaves room
    SELECT ARRAY(SELECT id FROM lapsed UNION ALL SELECT id FROM fresh LIMIT $2) AS ids
), lost AS (
    UPDATE attempts a SET ended_at = now(), outcome = 'interrupted', error = $4
    WHERE a.delivery_id = ANY(ARRAY(SELECT id FROM lapsed)) AND a.ended_at IS NULL
    RETURNING a.delivery_id
), taken AS (
    UPDATE deliveries d
    SET status = 'in_progress', attempts = d.attempts + 1, last_attempt_at = now(),
        interruptions = d.interruptions + (CASE WHEN d.status = 'in_progress' THEN 1 ELSE 0 END),
        next_attempt_at = NULL, lease_until = now() + make_interval(secs => $3), claimed_by = $5
    WHERE d.id = ANY((SELECT ids FROM picked)::bigint[])
    RETURNING d.id, d.address, d.attempts, d.tries, d.session_id, d.role
){_OPENED if with_attempts else ""}
SELECT taken.*{", opened.id AS attempt_id" if with_attempts else ""}
FROM taken{" JOIN opened ON opened.delivery_id = taken.id" if with_attempts else ""}, picked
ORDER BY array_position(picked.ids, taken.id)
"""


_OPENED = """, opened AS (
    INSERT INTO attempts (id, delivery_id, attempt)
    SELECT gen_random_uuid(), id, attempts FROM taken
    RETURNING id, delivery_id
)"""
CLAIM_SQL = claim_sql("d.session_id = $1 AND s.status IN ('queued', 'running')",
                      with_attempts=True)


@dataclass(frozen=True)
class Claimed:
    recipient: Recipient
    tries_before: int


async def claim(conn: asyncpg.Connection, session_id: uuid.UUID, limit: int, lease_s: float,
                owner: str) -> list[Claimed]:
    """Lease up to `limit` due deliveries to `owner` and open an attempt row for each
    (one statement)."""
    rows = await conn.fetch(CLAIM_SQL, session_id, limit, lease_s, INTERRUPTED_ERROR, owner)
    return _claimed(rows, [r["attempt_id"] for r in rows])


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
    return _claimed(rows, ids)


def _claimed(rows: Sequence[Any], attempt_ids: Sequence[uuid.UUID]) -> list[Claimed]:
    return [
        Claimed(Recipient(r["id"], str(aid), r["attempts"], r["address"], r["role"]), r["tries"])
        for r, aid in zip(rows, attempt_ids, strict=True)
    ]


def _keys(items: Sequence[Claimed]) -> tuple[list[int], list[int]]:
    return ([i.recipient.delivery_id for i in items], [i.recipient.attempt for i in items])


async def renew(conn: asyncpg.Connection, items: Sequence[Claimed], lease_s: float,
                owner: str) -> set[int]:
    """Extend the lease of claims still held by `owner`; returns the delivery ids renewed
    (a missing one was taken over or settled and must not be sent)."""
    if not items:
        return set()
    ids, atts = _keys(items)
    rows = await conn.fetch(
        "UPDATE deliveries d SET lease_until = now() + make_interval(secs => $3)"
        " FROM unnest($1::bigint[], $2::int[]) AS u(id, att)"
        " WHERE d.id = u.id AND d.id = ANY($1) AND d.attempts = u.att"
        " AND d.status = 'in_progress' AND d.claimed_by = $4 RETURNING d.id",
        ids, atts, lease_s, owner)
    return {r["id"] for r in rows}


async def give_back(conn: asyncpg.Connection, session_id: uuid.UUID, items: Sequence[Claimed],
                    owner: str, *, at: datetime | None = None, note: str | None = None) -> int:
    """Return claimed deliveries that were never sent: their attempt disappears and they
    are due again at once, or `at` (with `note` as their error), or `cancelled` if the
    session was cancelled meanwhile. No try is spent. Each is matched by its attempt's own
    id too: giving back takes the attempt number back, so the owner's next claim of the
    delivery has the same number, and a give-back tried again (its first answer lost)
    must not undo that claim."""
    if not items:
        return 0
    ids, atts = _keys(items)
    aids = [uuid.UUID(i.recipient.attempt_id) for i in items]
    async with conn.transaction():
        status = await conn.fetchval(
            "SELECT status FROM sessions WHERE id = $1 FOR KEY SHARE", session_id)
        cancelled = status == "cancelled"
        rows = await conn.fetch(
            "UPDATE deliveries d SET attempts = d.attempts - 1, lease_until = NULL,"
            " claimed_by = NULL,"
            " status = CASE WHEN $4 THEN 'cancelled' WHEN d.tries > 0 OR $5::timestamptz"
            "   IS NOT NULL THEN 'retry_scheduled' ELSE 'pending' END,"
            " next_attempt_at = CASE WHEN $4 THEN NULL ELSE coalesce($5, now()) END,"
            " error = CASE WHEN $4 THEN coalesce(d.error, 'session cancelled')"
            "   ELSE coalesce($6, d.error) END"
            " FROM unnest($1::bigint[], $2::int[], $7::uuid[]) AS u(id, att, aid)"
            " WHERE d.id = u.id AND d.id = ANY($1) AND d.attempts = u.att"
            " AND d.status = 'in_progress' AND d.claimed_by = $3"
            " AND EXISTS (SELECT 1 FROM attempts a WHERE a.id = u.aid AND a.delivery_id = u.id)"
            " RETURNING d.id, u.aid", ids, atts, owner, cancelled, at, note, aids)
        if rows:
            await conn.execute("DELETE FROM attempts WHERE id = ANY($1::uuid[])",
                               [r["aid"] for r in rows])
            if cancelled:
                await outbox.add_delivery_events(conn, [r["id"] for r in rows])
    return len(rows)


async def retire_interrupted(conn: asyncpg.Connection) -> list[uuid.UUID]:
    """Fail deliveries whose attempts were interrupted MAX_INTERRUPTIONS times; returns
    the sessions touched (so their completion can be checked)."""
    async with conn.transaction():
        rows = await conn.fetch(
            f"UPDATE deliveries d SET status = 'failed', outcome = 'interrupted', error = $1,"
            f" lease_until = NULL, claimed_by = NULL, next_attempt_at = NULL"
            f" WHERE {_EXPIRED} AND d.interruptions >= {MAX_INTERRUPTIONS - 1}"
            f" RETURNING d.id, d.session_id", GAVE_UP_ERROR)
        if not rows:
            return []
        await conn.execute(
            "UPDATE attempts SET ended_at = now(), outcome = 'interrupted', error = $2"
            " WHERE delivery_id = ANY($1::bigint[]) AND ended_at IS NULL",
            [r["id"] for r in rows], INTERRUPTED_ERROR)
        await outbox.add_delivery_events(conn, [r["id"] for r in rows])
    return sorted({r["session_id"] for r in rows})
