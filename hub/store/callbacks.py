"""Inbound callbacks (DESIGN §8.5): the voice delivery a caller is calling back about,
and the record of each callback (table `callbacks`, and the delivery's
`detail.callbacks`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

# The latest voice delivery to one of `$1` (the caller's number as stored) by a session
# whose transport dials through trunk `$2`. With `$3`, a delivery whose call reached the
# callee comes before one that never did.
LATEST_SQL = """
SELECT d.id AS delivery_id, d.session_id, s.app_id, d.address, d.status, s.media,
       EXISTS (SELECT 1 FROM suppressions x WHERE x.app_id = s.app_id
               AND x.address = d.address AND x.transport_type IN ('voice', '*')) AS suppressed
FROM deliveries d
JOIN sessions s ON s.id = d.session_id AND s.transport_type = 'voice'
JOIN transports t ON t.id = s.transport_id AND t.config->>'trunk' = $2
WHERE d.address = ANY($1::text[])
ORDER BY CASE WHEN $3 THEN EXISTS (SELECT 1 FROM attempts a WHERE a.delivery_id = d.id
                                   AND a.outcome = 'answered') END DESC NULLS LAST,
         d.last_attempt_at DESC NULLS LAST, s.created_at DESC, d.id DESC
LIMIT 1
"""

APPEND_SQL = """
UPDATE deliveries SET detail = jsonb_set(
    CASE WHEN jsonb_typeof(detail) = 'object' THEN detail ELSE '{}'::jsonb END,
    '{callbacks}',
    CASE WHEN jsonb_typeof(detail->'callbacks') = 'array' THEN detail->'callbacks'
         ELSE '[]'::jsonb END
    || jsonb_build_array(jsonb_build_object('at', $2::text, 'listenedS', $3::float8,
                                            'digits', $4::text)))
WHERE id = $1
"""


@dataclass(frozen=True)
class Latest:
    """The delivery a caller is calling back about."""

    delivery_id: int
    session_id: uuid.UUID
    app_id: uuid.UUID
    address: str
    status: str
    media_name: str | None
    media_duration_s: float
    suppressed: bool


async def latest(conn: asyncpg.Connection, addresses: Sequence[str], trunk: str, *,
                 reached_first: bool) -> Latest | None:
    row = await conn.fetchrow(LATEST_SQL, list(addresses), trunk, reached_first)
    if row is None:
        return None
    media = row["media"] if isinstance(row["media"], dict) else {}
    return Latest(row["delivery_id"], row["session_id"], row["app_id"], row["address"],
                  row["status"], media.get("name"), float(media.get("durationS") or 0),
                  row["suppressed"])


async def start(conn: asyncpg.Connection, *, caller: str, trunk: str | None, channel: str | None,
                found: Latest | None) -> int:
    """A callbacks row for a call that reached the `callback` route; returns its id."""
    callback_id: int = await conn.fetchval(
        "INSERT INTO callbacks (app_id, session_id, delivery_id, caller, trunk, channel)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        found.app_id if found else None, found.session_id if found else None,
        found.delivery_id if found else None, caller, trunk, channel)
    return callback_id


async def finish(conn: asyncpg.Connection, callback_id: int, *, listened_s: float, digits: str,
                 suppressed: bool) -> None:
    """Close the callback and append it to its delivery's `detail.callbacks` (the
    delivery's status and outcome are left as they are)."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE callbacks SET ended_at = now(), listened_s = $2, digits = $3,"
            " suppressed = $4 WHERE id = $1 RETURNING delivery_id, started_at",
            callback_id, listened_s, digits, suppressed)
        if row is None or row["delivery_id"] is None:
            return
        started: datetime = row["started_at"]
        await conn.execute(APPEND_SQL, row["delivery_id"], started.isoformat(),
                           round(listened_s, 2), digits)
