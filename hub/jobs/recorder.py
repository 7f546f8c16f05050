"""Writes a job's results to PostgreSQL in small chunks (every FLUSH_EVERY_RESULTS results
or FLUSH_EVERY_S), so that a killed worker loses at most one chunk's knowledge.

A chunk that cannot be written stays in memory, in order, and is tried again with a
growing delay; meanwhile `Health` holds every sender back. Only after a write has committed
are its claims released (until then they stay leased, so nobody else can send them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from hub import constants as c
from hub.jobs.health import Health
from hub.observe import metrics
from hub.results import Result
from hub.retry import decide
from hub.store import deliveries
from hub.store.claims import Claimed
from hub.store.deliveries import Outcome, Recorded

log = logging.getLogger(__name__)
WHAT = "recording results"
# A job whose results could not be written for this long gives up (its claims lapse, and
# each delivery's attempt is then counted as interrupted).
GIVE_UP_S = 300.0

AfterRecord = Callable[[asyncpg.Connection, Sequence[Outcome], Recorded], Awaitable[None]]


class RecordingFailed(Exception):
    """Results could not be written for GIVE_UP_S; the job stops."""


class Recorder:
    def __init__(self, pool: asyncpg.Pool, session: Any, owner: str, report_base: str,
                 health: Health, on_recorded: Callable[[Sequence[Claimed]], None],
                 after: AfterRecord | None = None) -> None:
        self.pool = pool
        self.session = session
        self.owner = owner
        self.report_base = report_base
        self.health = health
        self.on_recorded = on_recorded
        self.after = after
        self.pending: list[Outcome] = []
        self.wake = asyncio.Event()
        self.closed = False
        self.session_closed = False  # a recording closed the session
        self.failing_since: float | None = None

    def add(self, item: Claimed, result: Result) -> None:
        decision = decide(result, tries=item.tries_before + 1, retries=self.session["retries"],
                          intervals_s=list(self.session["retry_intervals_s"]))
        self.pending.append(Outcome(item, result, decision, datetime.now(UTC)))
        if len(self.pending) >= c.FLUSH_EVERY_RESULTS:
            self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    async def run(self) -> None:
        while True:
            if self.failing_since is None:
                try:
                    await asyncio.wait_for(self.wake.wait(), c.FLUSH_EVERY_S)
                except TimeoutError:
                    pass
                self.wake.clear()
            chunk, self.pending = self.pending, []
            if chunk and not await self._flush(chunk):
                self.pending[:0] = chunk  # kept, in order, for the next try
                if time.monotonic() - (self.failing_since or 0.0) > GIVE_UP_S:
                    raise RecordingFailed(f"{len(self.pending)} results could not be written"
                                          f" for {GIVE_UP_S:.0f} s")
                await self.health.backoff(WHAT)
                continue
            if self.closed and not self.pending:
                return

    async def _flush(self, chunk: list[Outcome]) -> bool:
        try:
            async with self.pool.acquire() as conn:
                # after `close` nothing more is added: this chunk is the job's last
                recorded = await deliveries.record(conn, self.session["id"], chunk,
                                                   owner=self.owner, report_base=self.report_base,
                                                   last=self.closed)
                await self._after(conn, chunk, recorded)
        except Exception as exc:  # any failure to write: keep the results, try again
            if self.failing_since is None:
                self.failing_since = time.monotonic()
            self.health.failed(WHAT, exc)
            return False
        self.failing_since = None
        self.session_closed = self.session_closed or recorded.session_closed
        self.health.recovered(WHAT)
        metrics.recorded(self.session["transport_type"],
                         [o.result.outcome for o in chunk if o.result.attempted], recorded.moved)
        self.on_recorded([o.claimed for o in chunk])
        return True

    async def _after(self, conn: asyncpg.Connection, chunk: Sequence[Outcome],
                     recorded: Recorded) -> None:
        """The follow-up work of a committed chunk. Its failure is not the chunk's: the
        results are written, and writing them again would overwrite what came since (a
        receipt's outcome on the attempt); receipts that came early are applied by the
        reconciler's sweep instead."""
        if self.after is None:
            return
        try:
            await self.after(conn, chunk, recorded)
        except Exception as exc:
            log.warning("after recording session %s's results: %s (the reconciler will)",
                        self.session["id"], exc)
