"""The periodic pass that makes PostgreSQL, not Redis, the source of truth.

It starts scheduled sessions that are due, re-enqueues due work that Redis no longer
holds (restart, flush, lost job; a session is only kicked when none of its job slots is
taken, so the queue never fills with re-kicks), takes back deliveries whose worker died
(expired lease), fails those whose attempts were interrupted too often, closes sessions
whose deliveries are all final, kicks the webhook outbox and forgets expired idempotency
keys. Every step is idempotent; one worker runs it at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import asyncpg

from hub.config import Settings
from hub.constants import RECONCILE_GRACE_S
from hub.jobs.queueing import Kicker
from hub.store import receipts, sessions
from hub.store.claims import INTERRUPTED_ERROR, retire_interrupted
from hub.store.outbox import add_delivery_events

log = logging.getLogger(__name__)

# Sessions kicked per batch of Redis round trips. Kicked one by one, a backlog of 80,000
# queued sessions cost 80,000 round trips every pass, one worker thread's whole time.
KICK_BATCH = 1000

DUE_SESSIONS_SQL = """
SELECT s.id, s.transport_type FROM sessions s
WHERE (s.status IN ('queued', 'running')
       OR (s.status = 'scheduled' AND s.scheduled_at <= now()))
  AND s.transport_type <> 'voice'
  AND EXISTS (
    SELECT 1 FROM deliveries d WHERE d.session_id = s.id AND (
      (d.status IN ('pending', 'retry_scheduled')
        AND d.next_attempt_at <= now() - make_interval(secs => $1))
      OR (d.status = 'in_progress' AND d.lease_until < now()
          AND d.claimed_by IS DISTINCT FROM 'receipt')))
"""

# Deliveries leased by a dead worker in a session that is paused or cancelled: the
# attempt is marked interrupted; paused ones wait for resume, cancelled ones end.
RELEASE_SQL = """
WITH lost AS (
    SELECT d.id, s.status AS session_status FROM deliveries d
    JOIN sessions s ON s.id = d.session_id
    WHERE d.status = 'in_progress' AND d.lease_until < now()
      AND d.claimed_by IS DISTINCT FROM 'receipt'
      AND s.status IN ('paused', 'cancelled')
    FOR UPDATE OF d SKIP LOCKED
), closed AS (
    UPDATE attempts a SET ended_at = now(), outcome = 'interrupted', error = $1
    FROM lost WHERE a.delivery_id = lost.id AND a.ended_at IS NULL
)
UPDATE deliveries d SET lease_until = NULL,
    status = CASE WHEN lost.session_status = 'cancelled' THEN 'cancelled' ELSE 'retry_scheduled' END,
    next_attempt_at = CASE WHEN lost.session_status = 'cancelled' THEN NULL ELSE now() END
FROM lost WHERE d.id = lost.id
RETURNING d.id, d.status
"""

UNFINISHED_SQL = """
SELECT s.id FROM sessions s
WHERE s.ended_at IS NULL AND s.status IN ('queued', 'running', 'cancelled')
  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.session_id = s.id
                  AND d.status IN ('pending', 'in_progress', 'retry_scheduled'))
"""


@dataclass
class Pass:
    kicked: list[str] = field(default_factory=list)
    released: int = 0
    retired: int = 0
    finished: int = 0
    webhooks_due: bool = False


async def reconcile(conn: asyncpg.Connection, kicker: Kicker, settings: Settings) -> Pass:
    done = Pass()
    due = [(str(row["id"]), row["transport_type"], 1)
           for row in await conn.fetch(DUE_SESSIONS_SQL, float(RECONCILE_GRACE_S))]
    for start in range(0, len(due), KICK_BATCH):  # a backlog costs a few round trips
        kicker.sessions(due[start:start + KICK_BATCH])
    done.kicked = [sid for sid, _, _ in due]
    async with conn.transaction():
        released = await conn.fetch(RELEASE_SQL, INTERRUPTED_ERROR)
        await add_delivery_events(conn, [r["id"] for r in released if r["status"] == "cancelled"])
    done.released = len(released)
    retired = await retire_interrupted(conn)
    done.retired = len(retired)
    done.finished += await receipts.expire(conn, settings.base_url)
    for row in await conn.fetch(UNFINISHED_SQL):
        async with conn.transaction():
            if await sessions.finish_if_done(conn, row["id"], report_base=settings.base_url):
                done.finished += 1
    done.webhooks_due = bool(await conn.fetchval(
        "SELECT 1 FROM webhook_events WHERE status = 'pending' AND next_attempt_at <= now()"
        " AND (lease_until IS NULL OR lease_until < now()) LIMIT 1"
    ))
    if done.webhooks_due:
        kicker.webhooks()
    await receipts.purge_early(conn)
    await conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
        settings.idempotency_ttl_h,
    )
    if done.kicked or done.released or done.retired or done.finished:
        log.info("reconciler: kicked %d sessions, released %d, gave up on %d, finished %d",
                 len(done.kicked), done.released, done.retired, done.finished)
    return done
