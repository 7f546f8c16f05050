"""Deliveries and attempts: recording results (one path for every channel) and reading them back."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from hub import constants as c
from hub.results import Result
from hub.retry import Decision, when_cancelled
from hub.store import outbox, pagination, sessions
from hub.store.claims import RECEIPT_OWNER, Claimed
from hub.store.db import Pool


@dataclass(frozen=True)
class Outcome:
    claimed: Claimed
    result: Result
    decision: Decision
    ended_at: datetime


@dataclass(frozen=True)
class Recorded:
    """What a recording did: deliveries now final, and whether it closed the session."""

    final: list[int]
    session_closed: bool
    moved: list[str] = field(default_factory=list)  # each moved delivery's new status


async def record(conn: asyncpg.Connection, session_id: uuid.UUID, outcomes: Sequence[Outcome],
                 *, owner: str | None, report_base: str, last: bool = False) -> Recorded:
    """The one recording path of every channel: close the attempts and move their
    deliveries on, in one transaction.

    The session row is read `FOR KEY SHARE` first, so a cancel (which takes it `FOR
    UPDATE`) either commits before (and every retry decided here becomes `cancelled`) or
    waits until this commits (and then cancels what is left). A delivery is only moved if
    `owner` still holds its claim for this attempt. A cancelled session whose last
    delivery ends here is closed in the same transaction, and so is any session whose
    last open deliveries end in its job's `last` recording (a small session's job then
    needs no transaction of its own to close it).
    """
    if not outcomes:
        return Recorded([], False)
    async with conn.transaction():
        status = await conn.fetchval(
            "SELECT status FROM sessions WHERE id = $1 FOR KEY SHARE", session_id)
        if status == c.S_CANCELLED:
            outcomes = [replace(o, decision=when_cancelled(o.decision)) for o in outcomes]
        cols = _columns(outcomes)
        await conn.execute(
            "UPDATE attempts a SET ended_at = u.ended, outcome = u.outcome, detail = u.detail,"
            " provider_ref = u.ref, error = u.error"
            " FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::text[],"
            " $6::timestamptz[]) AS u(id, outcome, detail, ref, error, ended)"
            # An attempt this path already recorded with the provider's message id is not
            # written again (a chunk rewritten after a lost commit reply): a receipt may
            # have settled it since. One ended by a guess (interrupted, its session's
            # content failed) gets the real result.
            " WHERE a.id = u.id AND a.id = ANY($1)"
            " AND (a.ended_at IS NULL OR a.provider_ref IS NULL)",
            cols["aid"], cols["outcome"], cols["detail"], cols["ref"], cols["error"], cols["ended"],
        )
        # A delivery waiting for the provider's receipt stays in_progress, owned by
        # RECEIPT_OWNER, with the receipt deadline as its lease.
        rows = await conn.fetch(
            "UPDATE deliveries d SET status = u.status, tries = d.tries + u.spend,"
            " outcome = u.outcome, provider_ref = u.ref, error = u.error,"
            " detail = CASE WHEN jsonb_typeof(d.detail->'callbacks') = 'array'"  # kept (§8.5)
            " THEN coalesce(u.detail, '{}'::jsonb) || jsonb_build_object('callbacks',"
            " d.detail->'callbacks') ELSE u.detail END,"
            " next_attempt_at = CASE WHEN u.status = 'in_progress' THEN NULL ELSE u.next END,"
            " lease_until = CASE WHEN u.status = 'in_progress' THEN u.next END,"
            " claimed_by = CASE WHEN u.status = 'in_progress' THEN $11 END,"
            " duration_s = coalesce(u.duration, d.duration_s)"
            " FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::jsonb[],"
            " $6::text[], $7::text[], $8::timestamptz[], $9::float8[], $10::int[],"
            " $12::text[], $13::text[])"
            " AS u(id, att, status, outcome, detail, ref, error, next, duration, spend,"
            " held, owner)"
            # The claim's guard is matched against the batch's rows, not written as a
            # filter on `deliveries` alone: such a filter (status in_progress, one owner)
            # looks like a handful of rows to the planner, which then scans them once per
            # row of the batch (a nested loop with the batch inside), quadratic per batch.
            " WHERE d.id = u.id AND d.id = ANY($1) AND d.attempts = u.att AND d.status = u.held"
            " AND d.claimed_by IS NOT DISTINCT FROM u.owner"
            " RETURNING d.id, d.status",
            cols["did"], cols["att"], cols["status"], cols["outcome"], cols["detail"],
            cols["ref"], cols["error"], cols["next"], cols["duration"], cols["spend"],
            RECEIPT_OWNER, [c.D_IN_PROGRESS] * len(outcomes), [owner] * len(outcomes),
        )
        moved = {r["id"] for r in rows}
        final = [r["id"] for r in rows if r["status"] in c.FINAL_DELIVERY_STATUSES]
        await outbox.add_delivery_events(conn, final)
        await _undo_unattempted(conn, [o for o in outcomes if not o.result.attempted
                                       and o.claimed.recipient.delivery_id in moved])
        closed = False
        if final and (last or status == c.S_CANCELLED):
            closed = await sessions.finish_if_done(conn, session_id, report_base=report_base)
    return Recorded(final, closed, [r["status"] for r in rows])


def _columns(outcomes: Sequence[Outcome]) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {k: [] for k in (
        "aid", "did", "att", "outcome", "detail", "ref", "error", "ended", "status", "next",
        "duration", "spend")}
    for o in outcomes:
        r, res = o.claimed.recipient, o.result
        cols["aid"].append(uuid.UUID(r.attempt_id))
        cols["did"].append(r.delivery_id)
        cols["att"].append(r.attempt)
        cols["outcome"].append(res.outcome)
        cols["detail"].append(_clean(res.detail))
        cols["ref"].append(_clean(res.provider_ref))
        cols["error"].append(_clean(res.error))
        cols["ended"].append(o.ended_at)
        cols["status"].append(o.decision.status)
        delay = o.decision.delay_s
        cols["next"].append(o.ended_at + timedelta(seconds=delay) if delay is not None else None)
        cols["duration"].append(res.detail.get("talkS") if res.outcome == "answered" else None)
        cols["spend"].append(1 if o.decision.spends_try else 0)
    return cols


def _clean(value: Any) -> Any:
    """Text PostgreSQL can store: no NUL, no lone surrogates (providers' replies vary)."""
    if isinstance(value, str):
        return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {str(_clean(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


async def _undo_unattempted(conn: asyncpg.Connection, outcomes: Sequence[Outcome]) -> None:
    """Nothing was sent (deferred before the provider call): no attempt to show. Only for
    deliveries this recording moved, i.e. whose claim was still this attempt's."""
    if not outcomes:
        return
    await conn.execute("DELETE FROM attempts WHERE id = ANY($1::uuid[])",
                       [uuid.UUID(o.claimed.recipient.attempt_id) for o in outcomes])
    await conn.execute(
        "UPDATE deliveries SET attempts = attempts - 1, outcome = NULL"
        " WHERE id = ANY($1::bigint[])", [o.claimed.recipient.delivery_id for o in outcomes])


# Delays before a session whose content failed to prepare (transiently) is tried again.
PREPARE_RETRY_S = (2.0, 5.0, 15.0, 60.0, 300.0, 900.0)


async def postpone(conn: asyncpg.Connection, session_id: uuid.UUID, reason: str) -> float | None:
    """Postpone a session's due work after a transient failure to prepare its content
    (no recipient's tries spent); None once PREPARE_RETRY_S is used up."""
    async with conn.transaction():
        failures = await conn.fetchval(
            "UPDATE sessions SET prepare_failures = prepare_failures + 1 WHERE id = $1"
            " RETURNING prepare_failures", session_id)
        if failures is None or failures > len(PREPARE_RETRY_S):
            return None
        delay = PREPARE_RETRY_S[failures - 1]
        await conn.execute(
            "UPDATE deliveries SET error = $3,"
            " next_attempt_at = greatest(next_attempt_at, now() + make_interval(secs => $2))"
            " WHERE session_id = $1 AND status IN ('pending', 'retry_scheduled')",
            session_id, delay, f"waiting {delay:g} s to try again: {reason}"[:500])
    return delay


async def fail_all(conn: asyncpg.Connection, session_id: uuid.UUID, error: str) -> int:
    """Fail every delivery with work left (a session-level problem such as unusable media).

    The session row first (`FOR UPDATE`, as a cancel), then the deliveries in id order:
    a receipt batch holds the row (`FOR KEY SHARE`) while it locks deliveries in id
    order, and rows taken in the order they were found could each hold what it waits for.
    """
    async with conn.transaction():
        await conn.execute("SELECT FROM sessions WHERE id = $1 FOR UPDATE", session_id)
        rows = await conn.fetch(
            "WITH open AS (SELECT id FROM deliveries WHERE session_id = $1"
            "  AND status = ANY($3::text[]) ORDER BY id FOR UPDATE)"
            " UPDATE deliveries d SET status = 'failed', outcome = 'failed', error = $2,"
            " next_attempt_at = NULL, lease_until = NULL FROM open WHERE d.id = open.id"
            " RETURNING d.id", session_id, error, sessions.OPEN,
        )
        await conn.execute(
            "UPDATE attempts a SET ended_at = now(), outcome = 'failed', error = $2"
            " FROM deliveries d WHERE a.delivery_id = d.id AND d.session_id = $1"
            " AND a.ended_at IS NULL", session_id, error,
        )
        await outbox.add_delivery_events(conn, [r["id"] for r in rows])
    return len(rows)


async def next_due(conn: asyncpg.Connection, session_id: uuid.UUID) -> datetime | None:
    """When the session next has work for a job: a due or scheduled delivery, or a claim
    (not a receipt wait) whose lease will run out."""
    due: datetime | None = await conn.fetchval(
        "SELECT min(coalesce(next_attempt_at, lease_until)) FROM deliveries WHERE session_id = $1"
        " AND (status IN ('pending', 'retry_scheduled')"
        "      OR (status = 'in_progress' AND claimed_by IS DISTINCT FROM $2))",
        session_id, RECEIPT_OWNER)
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
