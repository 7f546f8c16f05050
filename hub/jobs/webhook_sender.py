"""Drains the webhook outbox: signed POSTs, retried on non-2xx and timeouts with the same
`webhook-id` on the configured schedule; every attempt is logged."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
from yarl import URL

from hub import webhooks
from hub.config import Settings, load_settings
from hub.net import BlockedURL, check_url, guarded_session
from hub.store.db import create_pool

CLAIM_SQL = """
WITH due AS (
    SELECT id FROM webhook_events
    WHERE status = 'pending' AND next_attempt_at <= now()
      AND (lease_until IS NULL OR lease_until < now())
    ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED
)
UPDATE webhook_events e SET lease_until = now() + make_interval(secs => $2),
    attempts = e.attempts + 1
FROM due WHERE e.id = due.id
RETURNING e.id, e.url, e.payload, e.attempts, (SELECT webhook_secret FROM apps a
    WHERE a.id = e.app_id) AS secret
"""


def send_due_webhooks() -> int:
    """RQ entry point: deliver every due event, then return how many were attempted."""
    return asyncio.run(_drain(load_settings()))


async def _drain(settings: Settings) -> int:
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    total = 0
    try:
        async with guarded_session(settings.allow_private_urls) as http:
            while True:
                events = await pool.fetch(CLAIM_SQL, settings.webhook_batch_size,
                                          settings.webhook_timeout_s * 3)
                if not events:
                    return total
                await asyncio.gather(*(_send(pool, http, settings, e) for e in events))
                total += len(events)
    finally:
        await pool.close()


async def _send(
    pool: asyncpg.Pool, http: aiohttp.ClientSession, settings: Settings, event: Any
) -> None:
    body = json.dumps(event["payload"], separators=(",", ":")).encode()
    started = datetime.now(UTC)
    status_code: int | None = None
    error: str | None = None
    try:
        check_url(URL(event["url"]), settings.allow_private_urls)
        headers = webhooks.headers(event["secret"], str(event["id"]), int(time.time()), body)
        async with http.post(event["url"], data=body, headers=headers, allow_redirects=False,
                             timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_s)) as r:
            status_code = r.status
            if not 200 <= r.status < 300:
                error = f"HTTP {r.status}"
    except BlockedURL as exc:
        error = str(exc)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        error = f"{type(exc).__name__}: {exc}".rstrip(": ")
    await _record(pool, settings, event, started, status_code, error)


async def _record(
    pool: asyncpg.Pool, settings: Settings, event: Any, started: datetime,
    status_code: int | None, error: str | None,
) -> None:
    delays = settings.webhook_delays_s
    attempt = event["attempts"]
    if error is None:
        status, next_at = "delivered", None
    elif attempt < len(delays):
        status, next_at = "pending", datetime.now(UTC) + timedelta(seconds=delays[attempt])
    else:
        status, next_at = "failed", None
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO webhook_attempts (event_id, attempt, started_at, status_code, error)"
            " VALUES ($1, $2, $3, $4, $5)", event["id"], attempt, started, status_code, error,
        )
        await conn.execute(
            "UPDATE webhook_events SET status = $2, next_attempt_at = coalesce($3, next_attempt_at),"
            " last_error = $4, lease_until = NULL WHERE id = $1",
            event["id"], status, next_at, error,
        )

