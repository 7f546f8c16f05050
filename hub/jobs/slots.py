"""A delivery job's slot (see `Kicker.session`) and its turn on the queue.

The slot marker says "a job serves this session": `queued:<job id>` while its job waits,
`running:<job id>` with a heartbeat while the job runs (a job serving several sessions
marks all of their slots as it starts), deleted when it ends. A job that starts takes its
slot unless another job runs it (then that job serves the session and this one ends):
one only queued for another job (a kick gave it the slot when this job's marker lapsed or
was judged stale) finds this one running and ends. Its heartbeat and end never touch
another job's marker; while another job runs the slot it goes on beating, and marks the
slot again once it is free. `Turn` tells a job when to hand the worker over: once it
has run JOB_SLICE_S while jobs of other sessions wait on its queue, it stops, takes its
session's other waiting jobs off the queue and kicks them all again at the back, so
sessions are served in turn. A job serving several sessions also ends a session's turn
when others wait for their place in the job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress

from redis.asyncio import Redis
from redis.exceptions import RedisError

from hub.aredis import Lua
from hub.constants import MAX_PARALLEL_JOBS_PER_SESSION
from hub.jobs.queueing import QUEUED, SLOT_RUNNING_TTL_S, queued_job, shared_job, slot_key

log = logging.getLogger(__name__)
JOB_SLICE_S = 1.0
TURN_CHECK_S = 0.5
REDIS_TIMEOUT_S = 2.0
# KEYS[1] the slot; ARGV our marker, its TTL, the queued markers' prefix. A job that runs
# takes its slot when it is free, ours, or only queued for another job (that job, a whole
# queue behind when a long wait outlasted the first marker, finds it running and ends);
# it gives way only to another job that runs.
MARK = Lua("""
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] or string.sub(cur, 1, #ARGV[3]) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
""")
RELEASE = Lua("""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""")


class Slot:
    def __init__(self, redis: Redis, session_id: str, slot: int | None, job_id: str) -> None:
        self.redis = redis
        self.session_id = session_id
        self.slot = slot
        self.marker = f"running:{job_id}"  # the slot's marker while this job runs
        self.beat_s = SLOT_RUNNING_TTL_S / 3
        self._beat: asyncio.Task[None] | None = None

    async def take(self) -> bool:
        """Mark the slot running. A job kicked for a slot takes it unless another job
        runs it (then that job serves the session, and this one should end); a job
        without one (a scheduled job) takes a free one, or finds every slot busy."""
        try:
            if self.slot is None:
                for n in range(MAX_PARALLEL_JOBS_PER_SESSION):
                    if await self.redis.set(slot_key(self.session_id, n), self.marker,
                                            nx=True, ex=SLOT_RUNNING_TTL_S):
                        self.slot = n
                        break
                else:
                    return False
            elif not await self.refresh():
                log.info("slot %d of session %s: another job runs it and serves the session",
                         self.slot, self.session_id)
                return False
        except RedisError as exc:
            log.warning("job slot of session %s not marked: %s", self.session_id, exc)
            if self.slot is None:
                return False  # no slot of our own: leave the session to its other jobs
        self._beat = asyncio.create_task(self._heartbeat())
        return True

    async def refresh(self) -> bool:
        """Mark the slot ours (`running`, for SLOT_RUNNING_TTL_S) unless another job runs
        it; also each heartbeat."""
        return bool(await MARK(self.redis, [self._key()],
                               [self.marker, SLOT_RUNNING_TTL_S, QUEUED]))

    def _key(self) -> str:
        assert self.slot is not None
        return slot_key(self.session_id, self.slot)

    async def _heartbeat(self) -> None:
        """Beat while the job runs; while another job runs the slot (this one's marker
        lapsed meanwhile), go on trying, so the slot is marked again once it is free."""
        held = True
        while True:
            await asyncio.sleep(self.beat_s)
            try:
                was, held = held, await self.refresh()
                if was and not held:
                    log.warning("slot %d of session %s: another job runs it too (this"
                                " job's marker lapsed)", self.slot, self.session_id)
            except RedisError as exc:
                log.warning("job slot heartbeat failed: %s", exc)

    async def release(self) -> None:
        if self._beat is None:
            return
        self._beat.cancel()
        with suppress(asyncio.CancelledError):
            await self._beat
        self._beat = None
        try:
            await RELEASE(self.redis, [self._key()], [self.marker])
        except RedisError as exc:
            log.warning("job slot of session %s not released (it lapses): %s",
                        self.session_id, exc)


class Turn:
    """`await turn.over()`: true once this job should let other sessions' jobs run."""

    def __init__(self, redis: Redis, queue: str, session_id: str,
                 others_waiting: Callable[[], bool] | None = None) -> None:
        self.redis = redis
        self.queue = queue
        self.session_id = session_id
        self.others_waiting = others_waiting  # sessions waiting inside this job (shared)
        self.started = time.monotonic()
        self.checked = 0.0
        self.yielded = False

    async def over(self) -> bool:
        now = time.monotonic()
        if now - self.started < JOB_SLICE_S or now - self.checked < TURN_CHECK_S:
            return False
        self.checked = now
        if self.others_waiting is not None and self.others_waiting():
            self.yielded = True
            return True
        try:
            self.yielded = await asyncio.wait_for(self._others_waiting(), REDIS_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError):
            return False
        return self.yielded

    async def _others_waiting(self) -> bool:
        waiting = await self.redis.llen(f"rq:queue:{self.queue}")
        if not waiting:
            return False
        mine = await self.redis.mget([slot_key(self.session_id, n)
                                      for n in range(MAX_PARALLEL_JOBS_PER_SESSION)])
        # the session's own jobs on the queue; one it shares stands for other sessions too
        own_queued = sum(1 for v in mine
                         if (job := queued_job(v)) is not None and not shared_job(job))
        return bool(waiting > own_queued)
