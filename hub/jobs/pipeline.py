"""One job's send pipeline for one session: claim → send → record, exactly once under
slowness and faults.

- **Small claims.** A claim is sized to what the transport can send within
  CLAIM_HORIZON_S: its throughput measured over the last seconds, its messages per second
  (`mps`) and its concurrency. Little is held at once, so little can go stale.
- **Leases kept or given back.** Every held claim whose lease is getting old is renewed
  while it waits or is being sent. An item is only sent while its claim is still ours with
  at least half a lease to run; a claim someone else took over is dropped unsent. What the
  job will not send (its time slice ended, the session was paused or cancelled) is given
  back, unattempted.
- **Recording failures stop sending.** While results cannot be written or claims cannot
  be renewed, no item is sent; unrecorded results wait in memory (see `Recorder`).
- **Unexpected errors are failed attempts.** An exception while building or sending one
  message is that recipient's failed attempt, with the error; the job goes on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import asyncpg

from hub import constants as c
from hub.config import Settings
from hub.jobs.health import Health
from hub.jobs.recorder import AfterRecord, Recorder, RecordingFailed
from hub.observe import metrics
from hub.results import Result
from hub.store import claims, suppressions
from hub.store.claims import Claimed
from hub.transports.base import Sender

log = logging.getLogger(__name__)
CLAIM_HORIZON_S = 2.0     # claim about this many seconds of work at a time
RATE_WINDOW_S = 5.0       # throughput is measured over the last seconds
ASSUMED_SEND_S = 1.0      # before anything was measured: one send per worker per second
MEASURED_AFTER = 5        # sends done before the measured rate counts
MIN_SPAN_S = 0.1          # the shortest span a rate is measured over
RENEW_WHAT = "renewing claims"
ACTIVE = ("queued", "running")


@dataclass
class Held:
    item: Claimed
    deadline: float          # monotonic time by which the lease surely runs out
    blocked: bool = False    # on the do-not-contact list
    lost: bool = False       # the claim is no longer ours: never send


class Pipeline:
    def __init__(self, pool: asyncpg.Pool, session: Any, sender: Sender, settings: Settings,
                 owner: str, should_yield: Callable[[], Awaitable[bool]],
                 after_record: AfterRecord | None = None) -> None:
        self.pool = pool
        self.session = session
        self.sender = sender
        self.settings = settings
        self.owner = owner
        self.should_yield = should_yield
        self.lease_s = settings.lease_s
        # A sender may say how many sends it wants in flight (an SMTP connection pool, a
        # bulk API batch) and its limiter how many messages per second it may send.
        self.workers = int(getattr(sender, "concurrency", None) or settings.send_concurrency)
        self.mps: float | None = getattr(getattr(sender, "limiter", None), "mps", None)
        self.held: dict[int, Held] = {}
        self.queue: asyncio.Queue[Held | None] = asyncio.Queue()
        self.unsent: list[Held] = []
        self.room = asyncio.Event()
        self.taken = asyncio.Event()  # a sender took an item off the queue
        self.done_at: deque[float] = deque()
        self.started = time.monotonic()
        self.stopping = False
        self.aborted = False
        self.sent = 0
        self.health = Health()
        self.renew_lock = asyncio.Lock()
        self.recorder = Recorder(pool, session, owner, settings.base_url, self.health,
                                 self._recorded, after_record)

    async def run(self) -> int:
        """Send until a claim finds less than it asked for (nothing more is due now), the
        session stops, or the job's time is up."""
        recording = asyncio.create_task(self._record_loop())
        renewing = asyncio.create_task(self._renew_loop())
        try:
            await asyncio.gather(self._produce(), *(self._consume() for _ in range(self.workers)))
        finally:
            renewing.cancel()
            with suppress(asyncio.CancelledError):
                await renewing
            self.recorder.close()
            try:
                await recording
            finally:  # even when recording gave up: what was never sent goes back
                await self._give_back()
        return self.sent

    async def _record_loop(self) -> None:
        try:
            await self.recorder.run()
        except RecordingFailed:
            self.aborted = self.stopping = True
            raise

    # -- claiming ---------------------------------------------------------------------
    def _rate(self) -> float:
        now = time.monotonic()
        while self.done_at and now - self.done_at[0] > RATE_WINDOW_S:
            self.done_at.popleft()
        if len(self.done_at) >= min(self.workers, MEASURED_AFTER):
            # measured as soon as a few sends are done: a fast transport is not held to
            # the cautious first guess for its first second
            rate = len(self.done_at) / max(now - self.done_at[0], MIN_SPAN_S)
        else:
            rate = self.workers / ASSUMED_SEND_S
        return min(rate, self.mps) if self.mps else rate

    def _want(self) -> int:
        """How many more claims to hold now."""
        horizon = min(self.lease_s / 3, CLAIM_HORIZON_S)
        floor = self.workers if not self.mps else min(self.workers, math.ceil(self.mps * horizon))
        cap = max(self.settings.batch_size, self.workers)
        target = max(1, min(cap, max(floor, math.ceil(self._rate() * horizon))))
        return target - len(self.held)

    async def _produce(self) -> None:
        deadline = self.started + self.settings.job_max_s
        exhausted = False  # a claim found less than it asked for
        try:
            while not self.stopping:
                if time.monotonic() > deadline or await self.should_yield():
                    log.info("session %s: job's turn is over, %d claims held",
                             self.session["id"], len(self.held))
                    self.stopping = True
                    break
                if exhausted:  # nothing more to claim: the turn is still watched until
                    if self.queue.empty():  # every claimed item is being sent
                        break
                    await _next_set(self.taken)
                    continue
                want = self._want()
                if want <= 0:
                    await _next_set(self.room)
                    continue
                try:
                    batch = await self._claim(want)
                except Exception as exc:  # the database is away: try again shortly
                    self.health.failed("claiming", exc)
                    await self.health.backoff("claiming")
                    continue
                self.health.recovered("claiming")
                for held in batch:
                    self.held[held.item.recipient.delivery_id] = held
                    self.queue.put_nowait(held)
                # Nothing more is due now (or other jobs hold it): claiming again would
                # find nothing; what becomes due later is the follow-up's.
                exhausted = len(batch) < want
        finally:
            for _ in range(self.workers):
                self.queue.put_nowait(None)

    async def _claim(self, size: int) -> list[Held]:
        started = time.monotonic()
        async with self.pool.acquire() as conn:
            batch = await claims.claim(conn, self.session["id"], size, self.lease_s, self.owner)
            if not batch:
                return []
            blocked = await suppressions.suppressed(
                conn, self.session["app_id"], self.session["transport_type"],
                [b.recipient.address for b in batch])
        return [Held(b, started + self.lease_s, b.recipient.address in blocked) for b in batch]

    # -- sending ----------------------------------------------------------------------
    async def _consume(self) -> None:
        while (held := await self.queue.get()) is not None:
            self.taken.set()
            if not await self._ready(held):
                if not held.lost:
                    self.unsent.append(held)
                continue
            result = await self._send(held)
            self.done_at.append(time.monotonic())
            self.recorder.add(held.item, result)

    async def _ready(self, held: Held) -> bool:
        """Wait until sending is safe: recording works and the claim has time to run."""
        while True:
            if held.lost or self.stopping:
                return False
            if not self.health.ok.is_set():
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.health.ok.wait(), 1.0)
                continue
            if held.deadline - time.monotonic() >= self.lease_s / 2:
                return True
            await self._renew(force=True)

    async def _send(self, held: Held) -> Result:
        if held.blocked:
            return Result(c.O_SUPPRESSED, error="address is on the do-not-contact list")
        self.sent += 1
        try:
            with metrics.ATTEMPT_SECONDS.labels(self.session["transport_type"]).time():
                return await self.sender.send(held.item.recipient)
        except Exception as exc:  # a bug or an unforeseen library error: this attempt failed
            log.exception("sending to delivery %s failed unexpectedly",
                          held.item.recipient.delivery_id)
            text = f"{type(exc).__name__}: {exc}"[:300]
            return Result("failed", retryable=True, error=f"internal error while sending: {text}")

    def _recorded(self, items: Sequence[Claimed]) -> None:
        for item in items:
            self.held.pop(item.recipient.delivery_id, None)
        self.room.set()

    # -- leases -----------------------------------------------------------------------
    async def _renew_loop(self) -> None:
        every = min(self.lease_s / 4, 1.0)
        while True:
            await asyncio.sleep(every)
            await self._renew(force=False)

    async def _renew(self, *, force: bool) -> None:
        """Renew claims that have used 40% of their lease (all of them when `force`), drop
        those taken over, and stop when the session is no longer active."""
        async with self.renew_lock:
            started = time.monotonic()
            old = [h for h in self.held.values() if not h.lost
                   and (force or h.deadline - started < self.lease_s * 0.6)]
            try:
                async with self.pool.acquire() as conn:
                    status = await conn.fetchval("SELECT status FROM sessions WHERE id = $1",
                                                 self.session["id"])
                    kept = await claims.renew(conn, [h.item for h in old], self.lease_s,
                                              self.owner)
            except Exception as exc:  # keep what we hold; senders wait meanwhile
                self.health.failed(RENEW_WHAT, exc)
                await self.health.backoff(RENEW_WHAT)
                return
            self.health.recovered(RENEW_WHAT)
            if status not in ACTIVE:
                self.stopping = True
            for h in old:
                if h.item.recipient.delivery_id in kept:
                    h.deadline = started + self.lease_s
                else:
                    h.lost = True

    async def _give_back(self) -> None:
        """Claims never sent go back to the session, unattempted."""
        back = [h.item for h in self.unsent if not h.lost]
        self.unsent.clear()
        while back:
            try:
                async with self.pool.acquire() as conn:
                    await claims.give_back(conn, self.session["id"], back, self.owner)
                return
            except Exception as exc:
                self.health.failed("giving back claims", exc)
                if time.monotonic() - self.started > self.settings.job_max_s + 120:
                    log.warning("could not give back %d claims; they lapse after their lease",
                                len(back))
                    return
                await self.health.backoff("giving back claims")


async def _next_set(event: asyncio.Event, timeout_s: float = 0.5) -> None:
    """Wait until `event` is set again from now on, or `timeout_s`."""
    event.clear()
    with suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)
