"""Provider receipts: a status callback (or its absence past the deadline) decides the
fate of a delivery the provider accepted.

A receipt is matched by (transport, provider message id): the transport is the one whose
signature the callback carried, so one app can never settle another app's deliveries.
A receipt that matches no delivery yet (the provider called back before the worker had
recorded the message id) is kept in `early_receipts` and applied by `apply_early` once the
engine records that id. Both sides take a transaction-scoped advisory lock per
(transport, id) before they read, so a receipt is either seen by the callback's lookup or
stored where `apply_early` finds it.

Receipts are applied in batches (callbacks come in floods): one transaction settles many
deliveries. Row locks are taken sessions first (`FOR KEY SHARE`), then the deliveries still
waiting for a receipt (`FOR UPDATE`), each in id order, like recording and cancelling.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from hub import constants as c
from hub.retry import decide, when_cancelled
from hub.store import outbox, sessions
from hub.store.claims import RECEIPT_OWNER
from hub.store.db import plan_afresh
from hub.transports.base import Result

NO_RECEIPT = "the provider sent no delivery receipt before the deadline; assumed delivered"
EARLY_KEEP_H = 48  # an early receipt no delivery claimed within this long is dropped
LOCK_NAMESPACE = 0x52435054  # first key of the advisory locks on (transport, message id)
EXPIRE_MAX = 1000
STRANDED_WINDOW_H = 1  # the reconciler retries early receipts this recent on every pass

Key = tuple[uuid.UUID, str]  # (transport id, provider message id)

# By message id first (its index, one lookup per id: `OFFSET 0` keeps the lookup from
# being merged into a join the planner may answer with a pass over the table when it has
# no statistics for ids just recorded), then the transport: the caller keeps the exact pairs.
FIND_SQL = """
SELECT d.id, s.transport_id AS tid, d.provider_ref AS ref
FROM unnest($2::text[]) AS r(ref)
CROSS JOIN LATERAL (
    SELECT id, session_id, provider_ref FROM deliveries WHERE provider_ref = r.ref OFFSET 0
) AS d
JOIN sessions s ON s.id = d.session_id
WHERE s.transport_id = ANY($1::uuid[])
"""

STRANDED_SQL = """
SELECT transport_id, provider_ref FROM early_receipts
WHERE received_at > now() - make_interval(hours => $1)
ORDER BY received_at DESC LIMIT $2
"""

EXPIRED_SQL = """
SELECT d.id, d.provider_ref, s.transport_id
FROM deliveries d JOIN sessions s ON s.id = d.session_id
WHERE d.status = 'in_progress' AND d.claimed_by = $1 AND d.lease_until < now()
ORDER BY d.id LIMIT $2
"""


async def apply_many(conn: asyncpg.Connection, receipts: Sequence[tuple[uuid.UUID, str, Result]],
                     report_base: str) -> dict[Key, str]:
    """Settle deliveries by (transport id, provider message id) → {key: 'applied' |
    'ignored' | 'stored'} ('ignored': already final or a stale attempt's receipt;
    'stored': no such message recorded yet, kept for `apply_early`)."""
    wanted = {(tid, ref): result for tid, ref, result in receipts}  # the last word wins
    outcome: dict[Key, str] = {}
    async with conn.transaction():
        await plan_afresh(conn)  # a batch of callbacks is worth its planning
        await _lock(conn, wanted)
        found = await _find(conn, wanted)
        applied = await _settle_locked(
            conn, {did: (key[1], wanted[key]) for did, key in found.items()}, report_base)
        for did, key in found.items():
            if outcome.get(key) != "applied":
                outcome[key] = "applied" if did in applied else "ignored"
        early = {key: result for key, result in wanted.items() if key not in outcome}
        await _store_early(conn, early)
        outcome.update(dict.fromkeys(early, "stored"))
    return outcome


async def apply_early(conn: asyncpg.Connection, transport_id: uuid.UUID, refs: Sequence[str],
                      report_base: str) -> int:
    """Apply receipts that arrived before these message ids were recorded (the engine
    calls this right after committing results that wait for a receipt). → deliveries
    settled."""
    keys = [(transport_id, ref) for ref in set(refs)]
    if not keys:
        return 0
    async with conn.transaction():
        await _lock(conn, keys)
        rows = await conn.fetch(
            "SELECT provider_ref, result FROM early_receipts"
            " WHERE transport_id = $1 AND provider_ref = ANY($2::text[])",
            transport_id, [ref for _, ref in keys])
        if not rows:
            return 0
        early = {row["provider_ref"]: _load(row["result"]) for row in rows}
        found = await _find(conn, [(transport_id, ref) for ref in early])
        applied = await _settle_locked(
            conn, {did: (key[1], early[key[1]]) for did, key in found.items()}, report_base)
        await conn.execute(  # matched: applied, or ignored (already final, stale attempt)
            "DELETE FROM early_receipts WHERE transport_id = $1 AND provider_ref = ANY($2::text[])",
            transport_id, sorted({key[1] for key in found.values()}))
    return len(applied)


async def purge_early(conn: asyncpg.Connection) -> int:
    """Drop early receipts that no recorded message claimed within EARLY_KEEP_H hours."""
    status = await conn.execute(
        "DELETE FROM early_receipts WHERE received_at < now() - make_interval(hours => $1)",
        EARLY_KEEP_H)
    return int(status.split()[-1])


async def expire(conn: asyncpg.Connection, report_base: str) -> int:
    """Deliveries whose receipt deadline passed: the timeout says delivered (unconfirmed).
    Early receipts go first: recent ones (a worker may have stopped between recording a
    message id and `apply_early`) and those of the deliveries about to expire."""
    due = await conn.fetch(EXPIRED_SQL, RECEIPT_OWNER, EXPIRE_MAX)
    early: dict[uuid.UUID, set[str]] = {}
    for row in [*await conn.fetch(STRANDED_SQL, STRANDED_WINDOW_H, EXPIRE_MAX), *due]:
        early.setdefault(row["transport_id"], set()).add(row["provider_ref"])
    settled = 0
    for transport_id, refs in early.items():
        settled += await apply_early(conn, transport_id, sorted(refs), report_base)
    result = Result("sent", delivered=True, detail={"receipt": "none", "note": NO_RECEIPT})
    async with conn.transaction():
        done = await _settle_locked(conn, {r["id"]: (r["provider_ref"], result) for r in due},
                                    report_base, expired_only=True)
    return settled + len(done)


def _lock_key(key: Key) -> int:
    digest = hashlib.blake2b(f"{key[0]}:{key[1]}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _lock(conn: asyncpg.Connection, keys: Iterable[Key]) -> None:
    """Advisory locks (until the transaction ends) on these keys, in one global order."""
    ordered = sorted({_lock_key(key) for key in keys})
    if ordered:
        await conn.execute("SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::int[]) AS k",
                           LOCK_NAMESPACE, ordered)


async def _find(conn: asyncpg.Connection, keys: Iterable[Key]) -> dict[int, Key]:
    """Deliveries whose recorded message id is one of these, under the same transport."""
    wanted = set(keys)
    rows = await conn.fetch(FIND_SQL, list({k[0] for k in wanted}), [k[1] for k in wanted])
    return {row["id"]: (row["tid"], row["ref"]) for row in rows
            if (row["tid"], row["ref"]) in wanted}


async def _store_early(conn: asyncpg.Connection, early: Mapping[Key, Result]) -> None:
    if not early:
        return
    await conn.execute(
        "INSERT INTO early_receipts (transport_id, provider_ref, result)"
        " SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[])"
        " ON CONFLICT (transport_id, provider_ref)"
        " DO UPDATE SET result = EXCLUDED.result, received_at = now()",
        [k[0] for k in early], [k[1] for k in early], [_dump(r) for r in early.values()])


def _dump(result: Result) -> dict[str, Any]:
    return {"outcome": result.outcome, "delivered": result.delivered,
            "retryable": result.retryable, "detail": result.detail, "error": result.error}


def _load(data: Mapping[str, Any]) -> Result:
    return Result(str(data["outcome"]), delivered=bool(data["delivered"]),
                  retryable=bool(data["retryable"]), detail=dict(data.get("detail") or {}),
                  error=data.get("error"))


async def _settle_locked(conn: asyncpg.Connection, items: Mapping[int, tuple[str, Result]],
                         report_base: str, *, expired_only: bool = False) -> set[int]:
    """Lock the deliveries' sessions, then the deliveries, and settle those still waiting
    for this message's receipt (past their deadline too, if `expired_only`). → ids settled.
    Runs inside the caller's transaction."""
    if not items:
        return set()
    ids = sorted(items)
    session_ids = await conn.fetch(
        "SELECT DISTINCT session_id FROM deliveries WHERE id = ANY($1::bigint[])", ids)
    owners = {row["id"]: row for row in await conn.fetch(
        "SELECT id, status, retries, retry_intervals_s FROM sessions"
        " WHERE id = ANY($1::uuid[]) ORDER BY id FOR KEY SHARE",
        [row["session_id"] for row in session_ids])}
    # Only deliveries still waiting for a receipt are locked: one a late duplicate points at
    # may wait for its retry, which a job postponing the session updates after taking the
    # session's row, the row this batch's completion check waits for.
    rows = await conn.fetch(
        "SELECT id, session_id, provider_ref, tries, attempts, detail,"
        " lease_until < now() AS expired FROM deliveries WHERE id = ANY($1::bigint[])"
        " AND status = $2 AND claimed_by = $3 ORDER BY id FOR UPDATE",
        ids, c.D_IN_PROGRESS, RECEIPT_OWNER)
    settle = []
    for row in rows:
        ref, result = items[row["id"]]
        if row["provider_ref"] == ref and (row["expired"] or not expired_only):
            settle.append((row, owners[row["session_id"]], result))
    await _settle(conn, settle)
    for session_id in sorted({row["session_id"] for row, _, _ in settle}):
        await sessions.finish_if_done(conn, session_id, report_base=report_base)
    return {row["id"] for row, _, _ in settle}


async def _settle(conn: asyncpg.Connection, items: list[tuple[Any, Any, Result]]) -> None:
    if not items:
        return
    now = datetime.now(UTC)
    cols: dict[str, list[Any]] = {k: [] for k in (
        "id", "att", "status", "outcome", "detail", "error", "next")}
    final = []
    for row, session, result in items:
        decision = decide(result, tries=row["tries"], retries=session["retries"],
                          intervals_s=list(session["retry_intervals_s"]))
        if session["status"] == c.S_CANCELLED:
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
        " $6::timestamptz[]) AS u(id, status, outcome, detail, error, next)"
        " WHERE d.id = u.id AND d.id = ANY($1)",
        cols["id"], cols["status"], cols["outcome"], cols["detail"], cols["error"], cols["next"])
    await outbox.add_delivery_events(conn, final)
