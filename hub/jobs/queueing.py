"""Putting work on RQ queues. Redis is only a transport: every job can be recreated from
PostgreSQL by the reconciler, so a lost job delays work but never loses it."""

from __future__ import annotations

import logging
import math
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError, ResponseError
from rq import Queue
from rq.job import Job
from rq.queue import EnqueueData

from hub.constants import (
    JOB_FAILURE_TTL_S,
    JOB_RESULT_TTL_S,
    JOB_TIMEOUT_S,
    MAX_PARALLEL_JOBS_PER_SESSION,
    REDIS_PREFIX,
    SESSIONS_AT_ONCE,
)

log = logging.getLogger(__name__)

DELIVER_FUNC = "hub.jobs.deliver.deliver_session"          # one session's slot
DELIVER_MANY_FUNC = "hub.jobs.deliver.deliver_sessions"    # several sessions' slots
# Sessions kicked together share one RQ job, up to this many (a session at most once per
# job): RQ's own work per job (~30 % of a worker's CPU for two-recipient sessions, an
# eighth of the API's for the hand-off) is then paid once per batch. Small enough that a
# batch still spreads over several workers.
SESSIONS_PER_JOB = 16
SHARED_JOB = "shared-"  # the id of a job made for several sessions starts so
WEBHOOKS_KICK_KEY = REDIS_PREFIX + "kick:webhooks"
WEBHOOKS_KICK_TTL_S = 60
VOICE_ACTIVE_KEY = REDIS_PREFIX + "voice:active"
VOICE_SETUP_KEY = REDIS_PREFIX + "voice:setup"
VOICE_ALIVE_KEY = REDIS_PREFIX + "voice:alive"  # per controller: its loop runs, ARI is up
VOICE_ALIVE_TTL_S = 10
# A queued job's slot lapses after this long (a job lost with Redis loses its slot too);
# a running job's after SLOT_RUNNING_TTL_S without a heartbeat (its worker died).
SLOT_QUEUED_TTL_S = 900
QUEUED = "queued:"  # a slot marker's prefix while its job waits (the job id follows)
SLOT_RUNNING_TTL_S = 15
# A `queued` marker whose job does not wait on the queue is stale past this age (see
# `_stale_markers`); younger, it may be a kick between its two rounds.
SLOT_STALE_AFTER_S = 60
JOB_WAITING = (b"queued", "queued")  # an RQ job's status while it waits (bytes or decoded)
REPLACE_STALE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


Kick = tuple[str, str, int]  # (session id, transport type, delivery jobs wanted)
Step = tuple[bool, Callable[[Any], None]]  # (in MULTI/EXEC?, writes a round into a pipeline)


def _wanted(kicks: Sequence[Kick]) -> list[Kick]:
    """The kicks that need delivery jobs (voice sessions are claimed by the controller),
    each asking for 1 to MAX_PARALLEL_JOBS_PER_SESSION jobs."""
    return [(sid, type_, min(max(1, jobs), MAX_PARALLEL_JOBS_PER_SESSION))
            for sid, type_, jobs in kicks if type_ != "voice"]


def _failed(sessions: int, exc: Exception) -> bool:
    log.warning("could not enqueue %d session(s) (the reconciler will): %s", sessions, exc)
    return False


RQ_UNKNOWN_VERSION = (5, 0, 9)  # what RQ assumes when the server will not say


def _version(text: str) -> tuple[int, int, int]:
    """Redis's `redis_version` as RQ keeps it: three integers."""
    try:
        a, b, c = ([int(part) for part in text.split(".")[:3]] + [0, 0, 0])[:3]
    except ValueError:
        return RQ_UNKNOWN_VERSION
    return a, b, c


async def _server_version(aredis: AsyncRedis) -> tuple[int, int, int]:
    """The server's version, asked as RQ asks it (an INFO refused, e.g. by an ACL, gives
    RQ's own fallback rather than failing every hand-off)."""
    try:
        info = await aredis.info("server")
    except ResponseError:
        return RQ_UNKNOWN_VERSION
    return _version(str(info.get("redis_version", "")))


def slot_key(session_id: str, slot: int) -> str:
    return f"{REDIS_PREFIX}job:{session_id}:{slot}"


def queued_job(marker: bytes | str | None) -> str | None:
    """The job id a slot marker names while its job waits on the queue, else None."""
    text = marker.decode() if isinstance(marker, bytes) else marker
    return text.removeprefix(QUEUED) if text and text.startswith(QUEUED) else None


Claim = tuple[str, str, int, str, Any]  # session, type, slot, job id, stale marker or None


def _stale_markers(keys: list[str], markers: list[Any]
                   ) -> Generator[Step, list[Any], set[int]]:
    """The slots (index into `keys`) whose `queued` marker is stale: older than
    SLOT_STALE_AFTER_S and its job no longer waiting on the queue. Either the job never
    reached Redis (its kick's enqueue round failed after the slot round), or a worker took
    it off the queue and died before marking the slot `running` (a job marks it within
    milliseconds of starting). A job still waiting keeps its slot however long the queue.
    One more round, only when some slot holds a queued marker."""
    waiting = {i: job for i, marker in enumerate(markers) if (job := queued_job(marker))}
    if not waiting:
        return set()

    def look(pipe: Any) -> None:
        for i, job in waiting.items():
            pipe.hget(Job.key_for(job), "status")
            pipe.ttl(keys[i])

    found = yield False, look
    return {i for i, status, ttl in zip(waiting, found[0::2], found[1::2], strict=True)
            if status not in JOB_WAITING and 0 <= ttl <= SLOT_QUEUED_TTL_S - SLOT_STALE_AFTER_S}


def _claims(wanted: list[Kick], markers: list[Any], stale: set[int]) -> list[Claim]:
    """The slots to take for each session: free ones (or stale) up to the jobs wanted,
    each with the job it goes in (`_jobs_for`)."""
    per = MAX_PARALLEL_JOBS_PER_SESSION
    slots: list[tuple[str, str, int, Any]] = []
    for at, (sid, type_, jobs) in enumerate(wanted):
        base = at * per
        free = [n for n in range(per) if markers[base + n] is None or base + n in stale]
        need = jobs - (per - len(free))
        slots += [(sid, type_, n, markers[base + n]) for n in free[:max(0, need)]]
    return [(sid, type_, n, job_id, old)
            for (sid, type_, n, old), job_id in zip(slots, _jobs_for(slots), strict=True)]


def _jobs_for(slots: Sequence[tuple[str, str, int, Any]]) -> list[str]:
    """A job id for each slot: slots of one queue share a job, up to SESSIONS_PER_JOB of
    them, never two of one session (a session's parallel jobs may go to other workers).
    A job meant for several slots has an id starting SHARED_JOB (`shared_job`)."""
    open_: dict[str, list[tuple[str, set[str]]]] = {}  # queue → jobs with room, sessions
    ids = []
    for sid, type_, _, _ in slots:
        jobs = open_.setdefault(type_, [])
        job = next((j for j in jobs if sid not in j[1]), None)
        if job is None:
            job = (uuid.uuid4().hex, set())
            jobs.append(job)
        job[1].add(sid)
        if len(job[1]) >= SESSIONS_PER_JOB:
            jobs.remove(job)
        ids.append(job[0])
    sizes = Counter(ids)
    return [SHARED_JOB + i if sizes[i] > 1 else i for i in ids]


def shared_job(job_id: str) -> bool:
    """Whether a job (by id) was made to serve several sessions."""
    return job_id.startswith(SHARED_JOB)


def _take(pipe: Any, claims: list[Claim]) -> None:
    """Mark each claimed slot `queued:<job id>`: a free one if still free, a stale one if
    it still holds that stale marker (another kick may have taken it meanwhile)."""
    for sid, _, n, job_id, old in claims:
        new = QUEUED + job_id
        if old is None:
            pipe.set(slot_key(sid, n), new, nx=True, ex=SLOT_QUEUED_TTL_S)
        else:
            pipe.eval(REPLACE_STALE_LUA, 1, slot_key(sid, n), old, new, SLOT_QUEUED_TTL_S)


class Kicker:
    """Enqueues delivery and webhook jobs; failures are logged, never raised."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.server_version: tuple[int, int, int] | None = None  # known once asked

    def _queue(self, name: str) -> Queue:
        queue = Queue(name, connection=self.redis)
        if self.server_version is not None:
            queue.redis_server_version = self.server_version
        return queue

    def session(
        self, session_id: str, transport_type: str, *, parallel: int = 1, at: datetime | None = None
    ) -> bool:
        """Make sure `parallel` delivery jobs serve a session now, or start one at `at`.

        Each job holds one of the session's job slots (a Redis marker, `queued` from
        enqueue to start, then `running` with a heartbeat), so a session never has more
        than MAX_PARALLEL_JOBS_PER_SESSION jobs queued or running, however often it is
        kicked. A scheduled job (`at`) takes a free slot when it starts, or ends at once.
        """
        if transport_type == "voice":
            return True  # the voice controller claims its own work
        if at is None or at <= datetime.now(UTC):
            return self.sessions([(session_id, transport_type, parallel)])
        # RQ's scheduler keeps whole seconds and may fire up to 1 s early: round up.
        second = math.ceil(at.timestamp())
        job_id = f"deliver-{session_id}-{second}"
        try:
            if not Job.exists(job_id, connection=self.redis):
                self._queue(transport_type).enqueue_at(
                    datetime.fromtimestamp(second, UTC), DELIVER_FUNC, session_id,
                    job_id=job_id, job_timeout=JOB_TIMEOUT_S, result_ttl=JOB_RESULT_TTL_S,
                    failure_ttl=JOB_FAILURE_TTL_S)
        except RedisError as exc:
            log.warning("could not enqueue session %s (the reconciler will): %s", session_id, exc)
            return False
        return True

    def sessions(self, kicks: Sequence[Kick]) -> bool:
        """`session()` now, for many sessions in three Redis round trips: read every slot,
        take the free ones wanted (SET NX), enqueue the jobs for the slots taken (sessions
        share jobs, see `_jobs_for`). One more round when some slot holds a `queued`
        marker: is its job still waiting (`_stale_markers`)? False if Redis failed
        (the reconciler enqueues them later)."""
        wanted = _wanted(kicks)
        steps = self._steps(wanted)
        try:
            transaction, write = next(steps)
            while True:
                pipe = self.redis.pipeline(transaction=transaction)
                write(pipe)
                transaction, write = steps.send(pipe.execute())
        except StopIteration:
            return True
        except RedisError as exc:
            return _failed(len(wanted), exc)

    async def sessions_async(self, kicks: Sequence[Kick], aredis: AsyncRedis) -> bool:
        """`sessions()` on the event loop, through the asyncio client: RQ writes each
        round into a pipeline of the blocking client that is never executed, and its
        commands are sent through `aredis`. The API's loop neither waits on a thread nor
        fights one for the GIL (a blocking kick thread cost each request ~20 ms at
        300 req/s)."""
        wanted = _wanted(kicks)
        steps = self._steps(wanted)
        try:
            transaction, write = next(steps)
            if self.server_version is None:  # RQ would ask for it with the blocking client
                self.server_version = await _server_version(aredis)
            while True:
                recorded = self.redis.pipeline(transaction=transaction)
                write(recorded)
                assert not recorded.scripts, "RQ used a script: replay it too"
                sending = aredis.pipeline(transaction=transaction)
                for args, options in recorded.command_stack:
                    sending.execute_command(*args, **options)
                transaction, write = steps.send(await sending.execute())
        except StopIteration:
            return True
        except (RedisError, OSError) as exc:
            return _failed(len(wanted), exc)

    def _steps(self, wanted: list[Kick]) -> Generator[Step, list[Any], None]:
        """The Redis rounds of a kick, each written into a pipeline by its caller's driver,
        which sends back the round's results."""
        if not wanted:
            return
        per = MAX_PARALLEL_JOBS_PER_SESSION
        keys = [slot_key(sid, n) for sid, _, _ in wanted for n in range(per)]
        markers = (yield False, lambda pipe: pipe.mget(keys))[0]
        stale = yield from _stale_markers(keys, markers)
        claims = _claims(wanted, markers, stale)
        if not claims:
            return
        taken = yield False, lambda pipe: _take(pipe, claims)
        members: dict[str, tuple[str, list[tuple[str, int]]]] = {}  # job id → queue, slots
        for (sid, type_, n, job_id, _), won in zip(claims, taken, strict=True):
            if won:
                members.setdefault(job_id, (type_, []))[1].append((sid, n))
        if not members:
            return
        jobs_by_queue: dict[str, list[EnqueueData]] = {}
        for job_id, (type_, slots) in members.items():
            func, args = ((DELIVER_FUNC, slots[0]) if len(slots) == 1
                          else (DELIVER_MANY_FUNC, (slots,)))
            rounds = math.ceil(len(slots) / SESSIONS_AT_ONCE)  # each session's own bound
            jobs_by_queue.setdefault(type_, []).append(Queue.prepare_data(
                func, args, job_id=job_id, timeout=JOB_TIMEOUT_S * rounds,
                result_ttl=JOB_RESULT_TTL_S, failure_ttl=JOB_FAILURE_TTL_S))

        def enqueue(pipe: Any) -> None:
            for type_, datas in jobs_by_queue.items():
                self._queue(type_).enqueue_many(datas, pipeline=pipe)

        yield True, enqueue

    def to_back(self, session_id: str, transport_type: str) -> int:
        """Take the session's jobs still waiting on its queue off it (to be kicked again at
        the back, after the other sessions' jobs); returns how many were taken. A job it
        shares with other sessions stays where it is (taking it would take them too)."""
        taken = 0
        try:
            for n in range(MAX_PARALLEL_JOBS_PER_SESSION):
                key = slot_key(session_id, n)
                job_id = queued_job(self.redis.get(key))
                if job_id is None or shared_job(job_id):
                    continue
                if self.redis.lrem(f"rq:queue:{transport_type}", 0, job_id):
                    self.redis.delete(key, f"rq:job:{job_id}")
                    taken += 1
        except RedisError as exc:
            log.warning("could not move session %s to the back of its queue: %s", session_id, exc)
        return taken

    def webhooks(self) -> bool:
        """Ask the workers' webhook threads for a drain (they also sweep every few seconds)."""
        try:
            self.redis.set(WEBHOOKS_KICK_KEY, 1, ex=WEBHOOKS_KICK_TTL_S)
        except RedisError as exc:
            log.warning("could not ask for webhook delivery (the next sweep will): %s", exc)
            return False
        return True

    def publish_voice(self, owner: str, active: dict[str, int], setup_s: list[float],
                      ari_up: bool = True) -> None:
        """Live voice figures for /metrics (kept 10 s: a dead controller stops counting),
        and the controller's heartbeat for its health check."""
        pipe = self.redis.pipeline()
        pipe.set(f"{VOICE_ALIVE_KEY}:{owner}", "ari-up" if ari_up else "ari-down",
                 ex=VOICE_ALIVE_TTL_S)
        key = f"{VOICE_ACTIVE_KEY}:{owner}"
        pipe.delete(key)
        if active:
            pipe.hset(key, mapping=dict[Any, Any](active))
        pipe.expire(key, 10)
        if setup_s:
            pipe.hincrbyfloat(VOICE_SETUP_KEY, "sum", sum(setup_s))
            pipe.hincrby(VOICE_SETUP_KEY, "count", len(setup_s))
        pipe.execute()
