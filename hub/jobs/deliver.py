"""The delivery job shared by every queued transport: one RQ job serves one session.

It marks its job slot, opens the transport's sender (preparing the session's content,
e.g. its attachments), runs the send pipeline (`pipeline.py`) until a claim finds less
than it asked for, its turn is over or its time is up, then releases the slot and
schedules the session's next due work (or finds the session closed by its last
recording). A session whose content cannot be prepared for now (a transient fetch error) is
postponed with a growing delay, without spending any recipient's tries; content that can
never be used fails the session's remaining deliveries with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from functools import cache, partial
from typing import Any

import asyncpg
from pydantic import ValidationError
from redis.asyncio import Redis as AsyncRedis
from rq import get_current_job

from hub import constants as c
from hub.config import Settings, load_settings
from hub.jobs.jobloop import Shared, run_job
from hub.jobs.pipeline import Pipeline
from hub.jobs.queueing import Kicker
from hub.jobs.slots import Slot, Turn
from hub.net import BlockedURL, FetchError
from hub.store import deliveries, receipts, sessions
from hub.store import transports as transports_store
from hub.store.db import DATABASE_TROUBLE
from hub.store.deliveries import Outcome, Recorded
from hub.transports.registry import sending_spec

log = logging.getLogger(__name__)
OTHERS_SERVE: dict[str, Any] = {"sent": 0, "reason": "other jobs serve this session"}


def deliver_session(session_id: str, slot: int | None = None) -> dict[str, Any]:
    """RQ entry point: runs on the worker process's job loop (`jobloop`), with the
    database pool and Redis clients it keeps between jobs."""
    settings = _settings()
    result: dict[str, Any] = run_job(
        settings, partial(_deliver, settings, uuid.UUID(session_id), slot, _job_id()))
    return result


def deliver_sessions(slots: list[tuple[str, int]]) -> dict[str, Any]:
    """RQ entry point of a job serving several sessions kicked together (one slot each):
    up to SESSIONS_AT_ONCE of them at a time on the job loop. One session's error fails
    the job (RQ keeps it) once the others are done."""
    settings = _settings()
    sessions = [(uuid.UUID(sid), slot) for sid, slot in slots]
    result: dict[str, Any] = run_job(settings, partial(_deliver_many, settings, sessions,
                                                       _job_id()))
    return result


def _job_id() -> str:
    """The running RQ job's id (its slots' markers name it); a fresh one outside RQ."""
    job = get_current_job()
    return job.id if job is not None else f"direct-{uuid.uuid4().hex}"


async def _deliver_many(settings: Settings, sessions: list[tuple[uuid.UUID, int]],
                        job_id: str, shared: Shared) -> dict[str, Any]:
    # Every slot is marked `running` (with its heartbeat) before any session waits for
    # its place in this job: a marker left `queued` past a minute would look stale to the
    # next kick, which would queue a second job for the slot.
    slots = [Slot(shared.aredis, str(sid), n, job_id) for sid, n in sessions]
    room = asyncio.Semaphore(c.SESSIONS_AT_ONCE)
    waiting = 0
    try:
        taken = await asyncio.gather(*(slot.take() for slot in slots))

        async def one(session_id: uuid.UUID, slot: Slot, ok: bool) -> dict[str, Any]:
            nonlocal waiting
            if not ok:
                return OTHERS_SERVE
            waiting += 1
            async with room:
                waiting -= 1
                try:  # a session that has had its slice gives way to those waiting here
                    return await _serve(settings, session_id, slot, shared,
                                        lambda: waiting > 0)
                finally:
                    await slot.release()

        results = await asyncio.gather(
            *(one(sid, slot, ok) for (sid, _), slot, ok in zip(sessions, slots, taken,
                                                               strict=True)),
            return_exceptions=True)
    finally:
        for slot in slots:
            await slot.release()
    done, errors = {}, []
    for (session_id, _), r in zip(sessions, results, strict=True):
        if isinstance(r, BaseException):
            log.error("delivery job of session %s failed", session_id, exc_info=r)
            errors.append(r)
        done[str(session_id)] = r
    if errors:
        raise errors[0]
    return done


@cache
def _settings() -> Settings:
    """The process's settings, read at its first job: like the job loop's pools they last
    the worker's life (reading the environment and hub.toml was ~2 ms of each job)."""
    return load_settings()


async def _deliver(settings: Settings, session_id: uuid.UUID, slot_no: int | None,
                   job_id: str, shared: Shared) -> dict[str, Any]:
    slot = Slot(shared.aredis, str(session_id), slot_no, job_id)
    try:
        if not await slot.take():
            return OTHERS_SERVE
        return await _serve(settings, session_id, slot, shared)
    finally:
        await slot.release()


async def _serve(settings: Settings, session_id: uuid.UUID, slot: Slot, shared: Shared,
                 others_waiting: Callable[[], bool] | None = None) -> dict[str, Any]:
    engine = Engine(settings, shared.pool, Kicker(shared.redis), shared.aredis)
    return await engine.run(session_id, slot, others_waiting)


class Engine:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, kicker: Kicker,
                 redis: AsyncRedis) -> None:
        self.settings = settings
        self.pool = pool
        self.kicker = kicker
        self.redis = redis
        self.owner = f"job:{uuid.uuid4().hex}"
        self.closed = False  # a recording of this job closed the session

    async def run(self, session_id: uuid.UUID, slot: Slot,
                  others_waiting: Callable[[], bool] | None = None) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            session = await _activate(conn, session_id)
        if session is None:
            return {"sent": 0, "reason": "session not active"}
        turn = Turn(self.redis, session["transport_type"], str(session["id"]), others_waiting)
        try:
            sent = await self._work(session, turn)
        finally:
            await slot.release()  # before the follow-up, so that it can start the next job
        parallel = 1
        if turn.yielded:  # other sessions wait: this one's waiting jobs go behind them
            parallel += await asyncio.to_thread(self.kicker.to_back, str(session["id"]),
                                                session["transport_type"])
        await self._follow_up(session, parallel)
        return {"sent": sent}

    async def _work(self, session: Any, turn: Turn) -> int:
        transport = await transports_store.get_full(self.pool, session["transport_id"])
        if transport is None:
            await self._unusable(session, "the session's transport was deleted", transient=False)
            return 0
        spec = sending_spec(transport["type"])
        async with AsyncExitStack() as stack:
            try:
                # The content with its session's id: a sender may keep per-session state
                # (e.g. fetched attachments) in the database.
                content = {**session["instruction"], "sessionId": str(session["id"])}
                sender = await stack.enter_async_context(spec.open(
                    transport["full_config"], content, self.settings, str(transport["id"])))
            except (FetchError, BlockedURL, ValidationError, ValueError) as exc:
                await self._unusable(session, str(exc),
                                     transient=isinstance(exc, FetchError) and exc.transient)
                return 0
            except Exception as exc:  # an unforeseen error preparing the content: try later
                log.exception("preparing session %s failed", session["id"])
                await self._unusable(session, f"{type(exc).__name__}: {exc}", transient=True)
                return 0
            if session["prepare_failures"]:
                await self.pool.execute(
                    "UPDATE sessions SET prepare_failures = 0 WHERE id = $1", session["id"])
            pipeline = Pipeline(self.pool, session, sender, self.settings, self.owner, turn.over,
                                after_record=partial(self._apply_early_receipts,
                                                     session["transport_id"]))
            try:
                return await pipeline.run()
            finally:
                self.closed = pipeline.recorder.session_closed
        return 0  # pragma: no cover (the context manager does not swallow exceptions)

    async def _apply_early_receipts(self, transport_id: uuid.UUID, conn: asyncpg.Connection,
                                    chunk: Sequence[Outcome], recorded: Recorded) -> None:
        """Receipts that came before these message ids were recorded (after the commit)."""
        refs = [o.result.provider_ref for o in chunk
                if o.result.receipt_s is not None and o.result.provider_ref]
        if refs:
            await receipts.apply_early(conn, transport_id, refs, self.settings.base_url)

    async def _unusable(self, session: Any, reason: str, *, transient: bool) -> None:
        """The session's content cannot be used: postpone its work, or fail it."""
        async with self.pool.acquire() as conn:
            if transient:
                delay = await deliveries.postpone(conn, session["id"], reason)
                if delay is not None:
                    log.warning("session %s postponed %.0f s: %s", session["id"], delay, reason)
                    return
                reason = f"gave up after repeated failures: {reason}"
            await deliveries.fail_all(conn, session["id"], f"session content unusable: {reason}")

    async def _follow_up(self, session: Any, parallel: int = 1) -> None:
        """Schedule the next due work, close the session when done, and drain webhooks."""
        if self.closed:  # closed with its last results: nothing to schedule
            await asyncio.to_thread(self.kicker.webhooks)
            return
        try:
            async with self.pool.acquire() as conn:
                done = await sessions.finish_if_done(conn, session["id"],
                                                     report_base=self.settings.base_url)
                due, active = None, None
                if not done:  # a session just closed has nothing left to schedule
                    due = await deliveries.next_due(conn, session["id"])
                    active = await conn.fetchval("SELECT status FROM sessions WHERE id = $1",
                                                 session["id"])
        except DATABASE_TROUBLE as exc:
            log.warning("follow-up of session %s skipped (the reconciler will): %s",
                        session["id"], exc)
            return
        if due is not None and active in c.ACTIVE_SESSION_STATUSES:
            await asyncio.to_thread(self.kicker.session, str(session["id"]),
                                    session["transport_type"], parallel=parallel, at=due)
        if session["webhook_url"] or done:
            await asyncio.to_thread(self.kicker.webhooks)


async def _activate(conn: asyncpg.Connection, session_id: uuid.UUID) -> Any:
    """Due scheduled → queued; queued → running. None unless the session may send now."""
    return await conn.fetchrow(
        "UPDATE sessions SET status = 'running', started_at = coalesce(started_at, now())"
        " WHERE id = $1 AND (status IN ('queued', 'running')"
        "   OR (status = 'scheduled' AND scheduled_at <= now())) RETURNING *",
        session_id,
    )
