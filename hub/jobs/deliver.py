"""The delivery engine shared by every queued transport.

One RQ job works on one session: it claims due deliveries in batches (lease, SKIP
LOCKED), sends each batch concurrently through the transport's sender, and records
results in small chunks as they arrive, so that a killed worker loses at most one chunk's
knowledge (those recipients are attempted again after the lease, and their earlier
attempt is marked `interrupted`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
from redis import Redis

from hub import constants as c
from hub.config import Settings, load_settings
from hub.jobs.queueing import Kicker
from hub.jobs.retry import decide, when_cancelled
from hub.net import BlockedURL, FetchError
from hub.store import deliveries, receipts, sessions, suppressions
from hub.store import transports as transports_store
from hub.store.db import create_pool
from hub.store.deliveries import Claimed, Outcome
from hub.transports.base import Result, Sender
from hub.transports.registry import sending_spec

log = logging.getLogger(__name__)


def deliver_session(session_id: str) -> dict[str, Any]:
    """RQ entry point (runs in the worker; RQ gives each job a fresh event loop)."""
    settings = load_settings()
    return asyncio.run(_deliver(settings, uuid.UUID(session_id)))


async def _deliver(settings: Settings, session_id: uuid.UUID) -> dict[str, Any]:
    pool = await create_pool(settings.database_url, min_size=1, max_size=3)
    redis = Redis.from_url(settings.redis_url)
    try:
        engine = Engine(settings, pool, Kicker(redis))
        return await engine.run(session_id)
    finally:
        await pool.close()
        redis.close()


class Engine:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, kicker: Kicker) -> None:
        self.settings = settings
        self.pool = pool
        self.kicker = kicker

    async def run(self, session_id: uuid.UUID) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            session = await _activate(conn, session_id)
        if session is None:
            return {"sent": 0, "reason": "session not active"}
        sent = 0
        try:
            sent = await self._work(session)
        except (FetchError, BlockedURL) as exc:
            async with self.pool.acquire() as conn:
                await deliveries.fail_all(conn, session_id, f"session content unusable: {exc}")
        await self._follow_up(session)
        return {"sent": sent}

    async def _work(self, session: Any) -> int:
        transport = await transports_store.get_full(self.pool, session["transport_id"])
        if transport is None:
            raise FetchError("the session's transport was deleted")
        spec = sending_spec(transport["type"])
        async with spec.open(transport["full_config"], session["instruction"], self.settings,
                             str(transport["id"])) as sender:
            return await self._pipeline(session, sender)

    async def _pipeline(self, session: Any, sender: Sender) -> int:
        """Claim in batches while `send_concurrency` senders stay busy; record as results come.

        A claim is sized so that its recipients are all sent well within the lease: it
        starts small and grows with the throughput measured so far.
        """
        settings = self.settings
        workers = settings.send_concurrency
        queue: asyncio.Queue[tuple[Claimed, bool] | None] = asyncio.Queue(maxsize=workers)
        recorder = _Recorder(self.pool, session, settings.base_url)
        started = time.monotonic()
        deadline = started + settings.job_max_s
        sent = 0

        async def produce() -> None:
            try:
                while time.monotonic() < deadline:
                    rate = sent / max(time.monotonic() - started, 0.001)
                    size = int(min(settings.batch_size, max(2 * workers, rate * settings.lease_s / 4)))
                    batch, blocked = await self._claim(session, size)
                    if not batch:
                        return
                    for item in batch:
                        await queue.put((item, item.recipient.address in blocked))
            finally:
                for _ in range(workers):
                    await queue.put(None)

        async def consume() -> None:
            nonlocal sent
            while (job := await queue.get()) is not None:
                item, is_blocked = job
                if is_blocked:
                    result = Result(c.O_SUPPRESSED, error="address is on the do-not-contact list")
                else:
                    result = await sender.send(item.recipient)
                    sent += 1
                await recorder.add(item, result)

        flusher = asyncio.create_task(recorder.run())
        try:
            await asyncio.gather(produce(), *(consume() for _ in range(workers)))
        finally:
            await recorder.close()
            await flusher
        return sent

    async def _claim(self, session: Any, size: int) -> tuple[list[Claimed], set[str]]:
        async with self.pool.acquire() as conn:
            batch = await deliveries.claim(conn, session["id"], size, self.settings.lease_s)
            if not batch:
                return [], set()
            blocked = await suppressions.suppressed(
                conn, session["app_id"], session["transport_type"],
                [b.recipient.address for b in batch],
            )
        return batch, blocked

    async def _follow_up(self, session: Any) -> None:
        """Schedule the next due work, close the session when done, and drain webhooks."""
        async with self.pool.acquire() as conn:
            due = await deliveries.next_due(conn, session["id"])
            done = await sessions.finish_if_done(conn, session["id"],
                                                 report_base=self.settings.base_url)
            active = await conn.fetchval("SELECT status FROM sessions WHERE id = $1", session["id"])
        if due is not None and active in c.ACTIVE_SESSION_STATUSES:
            self.kicker.session(str(session["id"]), session["transport_type"], at=due)
        if session["webhook_url"] or done:
            self.kicker.webhooks()


async def _activate(conn: asyncpg.Connection, session_id: uuid.UUID) -> Any:
    """Due scheduled → queued; queued → running. None unless the session may send now."""
    return await conn.fetchrow(
        "UPDATE sessions SET status = 'running', started_at = coalesce(started_at, now())"
        " WHERE id = $1 AND (status IN ('queued', 'running')"
        "   OR (status = 'scheduled' AND scheduled_at <= now())) RETURNING *",
        session_id,
    )


class _Recorder:
    """Collects results and writes them every few dozen or every fraction of a second."""

    def __init__(self, pool: asyncpg.Pool, session: Any, report_base: str) -> None:
        self.pool = pool
        self.session = session
        self.report_base = report_base
        self.pending: list[Outcome] = []
        self.wake = asyncio.Event()
        self.closed = False

    async def add(self, item: Claimed, result: Result) -> None:
        decision = decide(result, tries=item.tries_before + 1, retries=self.session["retries"],
                          intervals_s=list(self.session["retry_intervals_s"]))
        self.pending.append(Outcome(item, result, decision, datetime.now(UTC)))
        if len(self.pending) >= c.FLUSH_EVERY_RESULTS:
            self.wake.set()

    async def close(self) -> None:
        self.closed = True
        self.wake.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), c.FLUSH_EVERY_S)
            except TimeoutError:
                pass
            self.wake.clear()
            chunk, self.pending = self.pending, []
            await self._flush(chunk)
            if self.closed and not self.pending:
                return

    async def _flush(self, chunk: Sequence[Outcome]) -> None:
        if not chunk:
            return
        async with self.pool.acquire() as conn:
            status = await conn.fetchval(
                "SELECT status FROM sessions WHERE id = $1", self.session["id"]
            )
            if status == c.S_CANCELLED:
                chunk = [replace(o, decision=when_cancelled(o.decision)) for o in chunk]
            await deliveries.record(conn, chunk)
            refs = [o.result.provider_ref for o in chunk
                    if o.result.receipt_s is not None and o.result.provider_ref]
            if refs:  # receipts that came before these message ids were recorded
                await receipts.apply_early(conn, self.session["transport_id"], refs,
                                           self.report_base)

