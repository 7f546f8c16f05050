"""Queries of the voice controller: sessions to start, trunks with work, claims per
trunk (across sessions), lease renewal, and the calls a controller owned before a crash."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
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

# A controller never takes over its own expired claims here: those are calls it still
# follows (its lease lapsed while the database was away) or will adopt when it reconciles.
# A lapsed claim is only taken if it lapsed before $6: those were checked with the
# Asterisk that placed their call (`expired_claims`), later ones not yet.
CLAIM_SQL = claim_sql("d.session_id = $1 AND s.status = 'running' AND s.media IS NOT NULL"
                      " AND d.claimed_by IS DISTINCT FROM $5"
                      " AND (d.status <> 'in_progress' OR d.lease_until < $6)")

EXPIRED_SQL = """
SELECT d.id, d.address, d.attempts, d.tries, d.session_id, d.role, d.claimed_by,
       a.id AS attempt_id, c.ari_url
FROM deliveries d JOIN sessions s ON s.id = d.session_id
JOIN attempts a ON a.delivery_id = d.id AND a.attempt = d.attempts AND a.ended_at IS NULL
LEFT JOIN voice_controllers c ON c.id = d.claimed_by
WHERE s.transport_id = $1 AND d.status = 'in_progress' AND d.lease_until < now()
  AND d.claimed_by IS DISTINCT FROM $2 AND d.claimed_by IS DISTINCT FROM 'receipt'
"""


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
                owner: str, turn: int = 0, lapsed_before: datetime | None = None
                ) -> list[tuple[Claimed, uuid.UUID]]:
    """Claim up to `limit` due calls on the trunk, shared out between its running sessions
    (each gets its part, the first in line changing with `turn`), so sessions sharing a
    trunk are served in turn rather than one after the other."""
    sessions = [r["id"] for r in await conn.fetch(
        "SELECT id FROM sessions WHERE transport_id = $1 AND status = 'running'"
        " AND media IS NOT NULL ORDER BY created_at, id", transport_id)]
    if not sessions:
        return []
    start = turn % len(sessions)
    order = sessions[start:] + sessions[:start]
    share = -(-limit // len(order))  # ceiling
    found: list[tuple[Claimed, uuid.UUID]] = []
    for session_id in order:
        if len(found) >= limit:
            break
        async with conn.transaction():
            rows = await conn.fetch(CLAIM_SQL, session_id, min(share, limit - len(found)),
                                    lease_s, INTERRUPTED_ERROR, owner,
                                    lapsed_before or datetime.fromtimestamp(0, UTC))
            claimed = await open_attempts(conn, rows)
        found += [(c, session_id) for c in claimed]
    return found


async def register(conn: asyncpg.Connection, owner: str, ari_url: str) -> None:
    await conn.execute(
        "INSERT INTO voice_controllers (id, ari_url) VALUES ($1, $2) ON CONFLICT (id)"
        " DO UPDATE SET ari_url = excluded.ari_url, seen_at = now()", owner, ari_url)


async def expired_claims(conn: asyncpg.Connection, transport_id: uuid.UUID, owner: str
                         ) -> tuple[list[Any], datetime]:
    """Other controllers' calls on this trunk whose lease ran out, with the attempt that
    may still be live and the ARI URL of the Asterisk it was dialled through; and the
    database's time of the look (claims lapsing later were not seen)."""
    async with conn.transaction():
        now: datetime = await conn.fetchval("SELECT now()")
        return list(await conn.fetch(EXPIRED_SQL, transport_id, owner)), now


async def take_over(conn: asyncpg.Connection, row: Any, owner: str, lease_s: float) -> bool:
    """Make a live call of a lapsed claim this controller's (same attempt, no new dial)."""
    taken = await conn.fetchval(
        "UPDATE deliveries SET claimed_by = $4, lease_until = now() + make_interval(secs => $5)"
        " WHERE id = $1 AND attempts = $2 AND claimed_by = $3 AND status = 'in_progress'"
        " AND lease_until < now() RETURNING 1",
        row["id"], row["attempts"], row["claimed_by"], owner, lease_s)
    return bool(taken)


async def hold_off(conn: asyncpg.Connection, row: Any, seconds: float) -> None:
    """A lapsed claim whose call is still live on another Asterisk: leave it to its owner
    a while longer (nobody may dial the number while that call lasts)."""
    await conn.execute(
        "UPDATE deliveries SET lease_until = now() + make_interval(secs => $4)"
        " WHERE id = $1 AND attempts = $2 AND claimed_by = $3 AND status = 'in_progress'",
        row["id"], row["attempts"], row["claimed_by"], seconds)


async def renew(conn: asyncpg.Connection, delivery_ids: Sequence[int], lease_s: float,
                owner: str) -> None:
    """Extend this controller's claims (never one another controller took over)."""
    await conn.execute(
        "UPDATE voice_controllers SET seen_at = now() WHERE id = $1", owner)
    if delivery_ids:
        await conn.execute(
            "UPDATE deliveries SET lease_until = now() + make_interval(secs => $2)"
            " WHERE id = ANY($1::bigint[]) AND status = 'in_progress' AND claimed_by = $3",
            list(delivery_ids), lease_s, owner)


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


async def attempts_started(conn: asyncpg.Connection, endpoint: str, seconds: float) -> int:
    """Attempts started in the last `seconds` on trunk `endpoint`, by every host."""
    return int(await conn.fetchval(
        "SELECT count(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
        " JOIN sessions s ON s.id = d.session_id JOIN transports t ON t.id = s.transport_id"
        " WHERE t.type = 'voice' AND t.config->>'trunk' = $1"
        " AND a.started_at > now() - make_interval(secs => $2)", endpoint, seconds))


async def sessions_of_attempts(conn: asyncpg.Connection,
                               attempt_ids: list[str]) -> dict[str, str]:
    """attempt id -> session id."""
    rows = await conn.fetch(
        "SELECT a.id::text AS attempt, d.session_id::text AS session FROM attempts a"
        " JOIN deliveries d ON d.id = a.delivery_id WHERE a.id = ANY($1::uuid[])", attempt_ids)
    return {r["attempt"]: r["session"] for r in rows}
