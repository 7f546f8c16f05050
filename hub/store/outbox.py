"""Webhook events written in the same transaction as the state change they report."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

DELIVERY_EVENTS_SQL = """
INSERT INTO webhook_events (id, app_id, session_id, url, type, payload)
SELECT gen_random_uuid(), s.app_id, s.id, s.webhook_url, 'delivery.completed',
       jsonb_build_object(
         'type', 'delivery.completed', 'timestamp', to_char(now() AT TIME ZONE 'UTC',
            'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
         'data', jsonb_build_object('sessionId', s.id, 'address', d.address,
            'status', d.status, 'outcome', d.outcome, 'attempts', d.attempts,
            'error', d.error, 'providerRef', d.provider_ref))
FROM deliveries d JOIN sessions s ON s.id = d.session_id
WHERE d.id = ANY($1::bigint[]) AND s.webhook_url IS NOT NULL
"""


async def add_delivery_events(conn: asyncpg.Connection, delivery_ids: Sequence[int]) -> None:
    if delivery_ids:
        await conn.execute(DELIVERY_EVENTS_SQL, list(delivery_ids))


async def add_session_event(
    conn: asyncpg.Connection, session: Any, counts: dict[str, int], report_url: str
) -> None:
    if not session["webhook_url"]:
        return
    payload = {
        "type": "session.completed",
        "data": {
            "sessionId": str(session["id"]),
            "status": session["status"],
            "counts": counts,
            "reportUrl": report_url,
        },
    }
    await conn.execute(
        "INSERT INTO webhook_events (id, app_id, session_id, url, type, payload)"
        " VALUES ($1, $2, $3, $4, 'session.completed',"
        " $5::jsonb || jsonb_build_object('timestamp', to_char(now() AT TIME ZONE 'UTC',"
        " 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')))",
        uuid.uuid4(), session["app_id"], session["id"], session["webhook_url"], payload,
    )
