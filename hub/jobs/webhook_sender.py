"""Drains the webhook outbox: signed POSTs, retried on non-2xx, time-outs and any other
error with the same `webhook-id` on `HUB_WEBHOOK_RETRY_SCHEDULE`; every attempt is logged.

The drain is a pipeline, not a series of batches. It keeps up to `webhook_concurrency`
sends in flight; while sends are in flight it claims more due events when a send ends
(at most every `CLAIM_GAP_S`), every `POLL_S` while slots are free, and at once after a
claim the caps cut short with more due. It records each event as its send ends, the
events ending together in one transaction (group commit). A claim skips
events whose URL already has `webhook_per_url` sends in flight or whose app has
`webhook_per_app`, counted from the leases in PostgreSQL, so the caps hold across every
worker's drain. A slow or dead receiver thus holds a few slots for at most its timeout,
while other apps' events go out at once.

Any error a send raises (bad port, malformed URL, guard refusal, time-out, anything else)
is a failed attempt of that event, stored as a short message without URL credentials or
query; after the schedule the event is `failed`. If a claim or a batch of results
cannot be written, the drain stops claiming, lets the sends in flight finish and raises;
the leases give unrecorded events back later (the whole batch's: each is sent again with
the same `webhook-id`). An event deleted meanwhile (its session was) is skipped when its
attempt is written. The drain ends when nothing is due and
nothing is in flight, or after `job_max_s` (it then asks for another drain).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import aiohttp
import asyncpg
from redis import Redis
from yarl import URL

from hub import webhooks
from hub.batching import GroupCommit
from hub.config import Settings, load_settings
from hub.jobs.queueing import Kicker
from hub.net import Guard, check_url, guarded_session
from hub.observe import metrics
from hub.store.db import create_pool, plan_afresh

log = logging.getLogger(__name__)

POLL_S = 0.25  # how soon newly due events are claimed while sends are in flight
CLAIM_GAP_S = 0.01  # claims for slots freed by ended sends come at most this often: a
# claim per ended send was a claim per event under a steady trickle (and the claim is the
# outbox's costliest statement)
LEASE_MARGIN_S = 15.0  # a claim's lease: the request timeout plus this
ERROR_MAX_CHARS = 200
_USERINFO = re.compile(r"(?<=//)\S*@")
_QUERY = re.compile(r"\?\S*")

CLAIM_SQL = """
WITH leased AS (
    SELECT app_id, url FROM webhook_events WHERE status = 'pending' AND lease_until >= now()
), due AS (
    SELECT id, app_id, url, next_attempt_at FROM webhook_events
    WHERE status = 'pending' AND next_attempt_at <= now()
      AND (lease_until IS NULL OR lease_until < now())
      AND url NOT IN (SELECT url FROM leased GROUP BY url HAVING count(*) >= $2)
      AND app_id NOT IN (SELECT app_id FROM leased GROUP BY app_id HAVING count(*) >= $3)
    ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED
), fair AS (
    SELECT id,
        row_number() OVER (PARTITION BY url ORDER BY next_attempt_at)
            + (SELECT count(*) FROM leased l WHERE l.url = due.url) AS url_slot,
        row_number() OVER (PARTITION BY app_id ORDER BY next_attempt_at)
            + (SELECT count(*) FROM leased l WHERE l.app_id = due.app_id) AS app_slot
    FROM due
)
UPDATE webhook_events e SET lease_until = now() + make_interval(secs => $4),
    attempts = e.attempts + 1
FROM fair WHERE e.id = fair.id AND fair.url_slot <= $2 AND fair.app_slot <= $3
RETURNING e.id, e.url, e.payload, e.attempts, (SELECT webhook_secret FROM apps a
    WHERE a.id = e.app_id) AS secret, (SELECT count(*) FROM due) AS considered
"""


def send_due_webhooks() -> int:
    """RQ entry point, for jobs queued by an earlier version (workers now drain the outbox
    in a thread of their own, see `hub.jobs.worker`)."""
    settings = load_settings()
    attempted, more = drain(settings)
    if more:
        redis = Redis.from_url(settings.redis_url)
        try:
            Kicker(redis).webhooks()
        finally:
            redis.close()
    return attempted


def drain(settings: Settings) -> tuple[int, bool]:
    """Deliver due events until none is due (or the drain's time is up): (attempted, more)."""
    return asyncio.run(_drain(settings))


async def _drain(settings: Settings) -> tuple[int, bool]:
    async with outbox_drainer(settings) as drain_once:
        return await drain_once()


@asynccontextmanager
async def outbox_drainer(settings: Settings) -> AsyncIterator[Callable[[], Awaitable[tuple[int, bool]]]]:
    """A drain function that keeps its database pool and HTTP connections between
    drains (a worker's webhook thread drains several times a second when kicked)."""
    pool = await create_pool(settings.database_url, min_size=0, max_size=4)
    try:
        async with guarded_session(Guard.of(settings)) as http:
            yield lambda: _Pipeline(pool, http, settings).run()
    finally:
        await pool.close()


def describe(exc: Exception) -> str:
    """A short, single-line error for the attempt log: no URL credentials or query."""
    text = str(exc) or ("no answer in time" if isinstance(exc, TimeoutError) else "")
    text = " ".join(_QUERY.sub("?…", _USERINFO.sub("", text)).split())
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:ERROR_MAX_CHARS]


class _Pipeline:
    def __init__(self, pool: asyncpg.Pool, http: aiohttp.ClientSession, settings: Settings):
        self.pool = pool
        self.http = http
        self.settings = settings
        self.in_flight: set[asyncio.Task[None]] = set()
        self.failure: Exception | None = None
        self.results = GroupCommit(self._write_results, wait_s=0.0)

    async def run(self) -> tuple[int, bool]:
        """(events attempted, whether due work may remain because time ran out)."""
        cap = self.settings.webhook_concurrency
        deadline = time.monotonic() + self.settings.job_max_s
        attempted = 0
        claimed_at = next_claim = 0.0
        try:
            while True:
                now = time.monotonic()
                claiming = self.failure is None and now < deadline
                free = self._room(cap)
                if claiming and free > 0 and (now >= next_claim or not self.in_flight):
                    claimed_at = now
                    got, more = await self._claim(free)
                    attempted += got
                    # a claim the caps cut short (it took less than it had room for,
                    # though more was due): claim again at once; else in POLL_S, or
                    # sooner once a send ends (below)
                    next_claim = now if got and more and got < free else now + POLL_S
                if not self.in_flight:
                    break
                wait = (max(next_claim - time.monotonic(), 0.001)
                        if claiming and self._room(cap) > 0 else None)
                done, _ = await asyncio.wait(self.in_flight, timeout=wait,
                                             return_when=asyncio.FIRST_COMPLETED)
                self.in_flight -= done
                if done:  # a slot is free: claim for it, though not sooner than the gap
                    next_claim = min(next_claim, claimed_at + CLAIM_GAP_S)
                for task in done:
                    if (exc := task.exception()) is not None:
                        self._fail(exc)
        finally:
            for task in self.in_flight:
                task.cancel()
            await asyncio.gather(*self.in_flight, return_exceptions=True)
        if self.failure is not None:
            raise self.failure
        return attempted, time.monotonic() >= deadline

    def _room(self, cap: int) -> int:
        """How many more sends may start now."""
        return cap - len(self.in_flight)

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None and isinstance(exc, Exception):
            log.warning("webhook drain stops claiming: %s", exc)
            self.failure = exc

    async def _claim(self, free: int) -> tuple[int, bool]:
        """Claim up to `free` due events and start their sends: (how many, whether more
        may be due now: the claim looked at as many as it could take)."""
        s = self.settings
        try:
            events = await self.pool.fetch(CLAIM_SQL, free, s.webhook_per_url, s.webhook_per_app,
                                           s.webhook_timeout_s + LEASE_MARGIN_S)
        except Exception as exc:  # the database is away: finish what is in flight, then stop
            self._fail(exc)
            return 0, False
        self.in_flight.update(asyncio.create_task(self._attempt(e)) for e in events)
        return len(events), bool(events) and events[0]["considered"] >= free

    async def _attempt(self, event: Any) -> None:
        started = datetime.now(UTC)
        status_code: int | None = None
        error: str | None = None
        try:
            status_code = await self._post(event)
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except Exception as exc:  # whatever one send raises is that event's failed attempt
            error = describe(exc)
        await self._record(event, started, status_code, error)

    async def _post(self, event: Any) -> int:
        url = URL(event["url"])
        check_url(url, Guard.of(self.settings))
        body = json.dumps(event["payload"], separators=(",", ":")).encode()
        headers = webhooks.headers(event["secret"], str(event["id"]), int(time.time()), body)
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
        async with self.http.post(url, data=body, headers=headers, allow_redirects=False,
                                  timeout=timeout) as resp:
            return resp.status

    async def _record(
        self, event: Any, started: datetime, status_code: int | None, error: str | None
    ) -> None:
        """Log the attempt; schedule the next one, or end the event (written with the
        other attempts ending now, see `_write_results`)."""
        delays = self.settings.webhook_delays_s
        attempt = event["attempts"]
        if error is None:
            status, next_at = "delivered", None
        elif attempt < len(delays):
            status, next_at = "pending", datetime.now(UTC) + timedelta(seconds=delays[attempt])
        else:
            status, next_at = "failed", None
        await self.results.submit(
            _Result(event["id"], attempt, started, status_code, error, status, next_at))
        metrics.webhook("retry" if status == "pending" else status)

    async def _write_results(self, batch: list[_Result]) -> list[None]:
        """One transaction for the attempts that ended together. Only the claim that made
        an attempt may move its event on (a later claim may own it by now)."""
        cols = list(zip(*batch, strict=True))
        async with self.pool.acquire() as conn, conn.transaction():
            # planned for this batch: a connection's cached plan, made while the outbox
            # was small, went on scanning it as it grew (2 ms a batch at 6,000 events)
            await plan_afresh(conn)
            # an event deleted since its claim (with its session) has no attempt to log;
            # the lock keeps it from going before this commits
            await conn.execute(
                "INSERT INTO webhook_attempts (event_id, attempt, started_at, status_code, error)"
                " SELECT u.* FROM unnest($1::uuid[], $2::int[], $3::timestamptz[], $4::int[],"
                " $5::text[]) AS u(id, attempt, started, code, error)"
                " JOIN webhook_events e ON e.id = u.id WHERE e.id = ANY($1)"
                " FOR KEY SHARE OF e", *cols[:5])
            await conn.execute(
                "UPDATE webhook_events e SET status = u.status, last_error = u.error,"
                " lease_until = NULL, next_attempt_at = coalesce(u.next_at, e.next_attempt_at)"
                " FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::timestamptz[])"
                " AS u(id, attempt, error, status, next_at)"
                " WHERE e.id = u.id AND e.id = ANY($1) AND e.attempts = u.attempt"
                " AND e.status = 'pending'",
                cols[0], cols[1], cols[4], cols[5], cols[6])
        return [None] * len(batch)


class _Result(NamedTuple):
    event_id: Any
    attempt: int
    started: datetime
    status_code: int | None
    error: str | None
    status: str
    next_at: datetime | None
