"""Queries of the voice controller: sessions to start, trunks with work, claims per
trunk (across sessions), lease renewal, and the calls a controller owned before a crash."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from hub.store.claims import INTERRUPTED_ERROR, Claimed, claim_sql, open_attempts

ACTIVATE_SQL = """
UPDATE sessions SET status = 'running', started_at = coalesce(started_at, now())
WHERE transport_type = 'voice'
  AND (status = 'queued' OR (status = 'scheduled' AND scheduled_at <= now()))
RETURNING id
"""

TRUNKS_SQL = """
SELECT DISTINCT t.id, t.name, t.config FROM transports t
JOIN sessions s ON s.transport_id = t.id
WHERE s.transport_type = 'voice' AND s.status = 'running'
"""

CLAIM_SQL = claim_sql("s.transport_id = $1 AND s.status = 'running' AND s.media IS NOT NULL")


async def activate_sessions(conn: asyncpg.Connection) -> list[uuid.UUID]:
    return [r["id"] for r in await conn.fetch(ACTIVATE_SQL)]


async def sessions_needing_media(conn: asyncpg.Connection) -> list[Any]:
    return list(await conn.fetch(
        "SELECT * FROM sessions WHERE transport_type = 'voice' AND status = 'running'"
        " AND media IS NULL"))


async def set_media(conn: asyncpg.Connection, session_id: uuid.UUID, media: dict[str, Any]) -> None:
    await conn.execute("UPDATE sessions SET media = $2 WHERE id = $1", session_id, media)


async def trunks_with_work(conn: asyncpg.Connection) -> list[Any]:
    return list(await conn.fetch(TRUNKS_SQL))


async def claim(conn: asyncpg.Connection, transport_id: uuid.UUID, limit: int, lease_s: float,
                owner: str) -> list[tuple[Claimed, uuid.UUID]]:
    async with conn.transaction():
        rows = await conn.fetch(CLAIM_SQL, transport_id, limit, lease_s, INTERRUPTED_ERROR, owner)
        claimed = await open_attempts(conn, rows)
    return [(c, r["session_id"]) for c, r in zip(claimed, rows, strict=True)]


async def defer(conn: asyncpg.Connection, claimed: Claimed, until: datetime, reason: str) -> None:
    """Give a claimed delivery back unattempted (outside the calling window)."""
    async with conn.transaction():
        await conn.execute("DELETE FROM attempts WHERE id = $1",
                           uuid.UUID(claimed.recipient.attempt_id))
        await conn.execute(
            "UPDATE deliveries SET status = 'retry_scheduled', attempts = attempts - 1,"
            " next_attempt_at = $2, lease_until = NULL, claimed_by = NULL, error = $3"
            " WHERE id = $1", claimed.recipient.delivery_id, until, reason)


async def renew(conn: asyncpg.Connection, delivery_ids: Sequence[int], lease_s: float) -> None:
    if delivery_ids:
        await conn.execute(
            "UPDATE deliveries SET lease_until = now() + make_interval(secs => $2)"
            " WHERE id = ANY($1::bigint[]) AND status = 'in_progress'",
            list(delivery_ids), lease_s)


async def owned_open_calls(conn: asyncpg.Connection, owner: str) -> list[Any]:
    """Calls this controller had started and not recorded (it was restarted meanwhile)."""
    return list(await conn.fetch(
        "SELECT d.id, d.address, d.attempts, d.tries, d.session_id, a.id AS attempt_id"
        " FROM deliveries d JOIN attempts a ON a.delivery_id = d.id AND a.ended_at IS NULL"
        " WHERE d.status = 'in_progress' AND d.claimed_by = $1", owner))


async def endpoint_configs(conn: asyncpg.Connection, endpoint: str) -> list[dict[str, Any]]:
    """The configs of every voice transport, in any app, that dials PJSIP endpoint
    `endpoint` (their limits together are the carrier's)."""
    return [r["config"] for r in await conn.fetch(
        "SELECT config FROM transports WHERE type = 'voice' AND config->>'trunk' = $1",
        endpoint)]
