"""The submission hot path (issue 12 part 4): what a burst of POST /v1/sessions leaves in
Redis and what storing a session costs PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp
import asyncpg
import pytest
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus

from hub.aredis import async_redis
from hub.config import Settings
from hub.constants import SESSIONS_AT_ONCE
from hub.dev.smtp import SmtpSink
from hub.jobs import reconciler
from hub.jobs.queueing import (
    DELIVER_FUNC,
    DELIVER_MANY_FUNC,
    SESSIONS_PER_JOB,
    SLOT_QUEUED_TTL_S,
    Kick,
    Kicker,
    queued_job,
    shared_job,
    slot_key,
)
from hub.jobs.slots import JOB_SLICE_S, Turn
from tests.conftest import DB_URL, REDIS_URL, Procs
from tests.helpers import Api, free_port

pytestmark = pytest.mark.e2e
DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


async def submit(api: Api, i: int) -> str:
    """An immediate one-recipient email session; its id."""
    status, body = await api.post("/v1/sessions", {
        "transport": {"type": "email", "subject": "Hi", "message": "Hello"},
        "audience": [f"r{i}@example.com"], "options": {"trigger": "immediate"}})
    assert status == 201, body
    return str(body["sessionId"])


def queued_jobs(redis: Redis, queue: str) -> dict[str, list[int]]:
    """session id → the job slots of the delivery jobs waiting on `queue`."""
    out: dict[str, list[int]] = {}
    for job in Queue(queue, connection=redis).get_jobs():
        for session_id, slot in job_slots(job):
            out.setdefault(session_id, []).append(slot)
    return {sid: sorted(slots) for sid, slots in out.items()}


def job_slots(job: Job) -> list[tuple[str, int]]:
    """The (session id, slot) pairs a delivery job serves."""
    if job.func_name == DELIVER_FUNC:
        session_id, slot = job.args
        return [(session_id, slot)]
    assert job.func_name == DELIVER_MANY_FUNC
    return [(sid, n) for sid, n in job.args[0]]


async def kick(kicker: Kicker, kicks: list[Kick], driver: str) -> bool:
    """Kick through the workers' blocking driver or the API's asyncio one."""
    if driver == "blocking":
        return kicker.sessions(kicks)
    aredis = async_redis(REDIS_URL)
    try:
        return await kicker.sessions_async(kicks, aredis)
    finally:
        await aredis.aclose()


@pytest.mark.parametrize("driver", ["blocking", "asyncio"])
async def test_a_batch_of_kicks_enqueues_each_session_s_missing_jobs_once(
        db: Any, redis: Redis, driver: str) -> None:
    """The workers' blocking client and the API's asyncio client leave the same jobs."""
    a, b, c, v = (str(uuid.uuid4()) for _ in range(4))
    redis.set(slot_key(b, 0), "running:elsewhere")  # b already has a job running
    kicker = Kicker(redis)
    kicks: list[Kick] = [(a, "email", 3), (b, "email", 2), (c, "sms", 1), (v, "voice", 1)]
    assert await kick(kicker, kicks, driver)
    assert queued_jobs(redis, "email") == {a: [0, 1, 2], b: [1]}
    assert queued_jobs(redis, "sms") == {c: [0]}
    assert redis.llen("rq:queue:voice") == 0  # the controller claims its own work
    for sid, slot in ((a, 0), (a, 1), (a, 2), (b, 1), (c, 0)):  # each slot names its job
        job_id = queued_job(redis.get(slot_key(sid, slot)))
        assert job_id is not None and redis.exists(f"rq:job:{job_id}")
    # Kicked again (the reconciler, a resume): the slots are held, nothing more is queued.
    assert kicker.sessions([(a, "email", 3), (b, "email", 2), (c, "sms", 1)])
    assert kicker.session(a, "email", parallel=3)
    assert queued_jobs(redis, "email") == {a: [0, 1, 2], b: [1]}
    assert queued_jobs(redis, "sms") == {c: [0]}


@pytest.mark.parametrize("driver", ["blocking", "asyncio"])
async def test_a_slot_whose_queued_job_never_reached_redis_is_taken_again(
        db: Any, redis: Redis, driver: str) -> None:
    """A kick whose enqueue round failed after its slot round left `queued:<id>` markers
    naming jobs that do not exist. Past a minute such a marker is stale: the next kick
    takes its slot again (before, the session waited out the marker's 15 minutes). A
    younger one may be a kick still on its way (left alone), and one whose job exists is
    a job waiting its turn (left alone)."""
    stale, young, waiting = (str(uuid.uuid4()) for _ in range(3))
    kicker = Kicker(redis)
    assert kicker.sessions([(waiting, "email", 1)])
    waiting_job = queued_job(redis.get(slot_key(waiting, 0)))
    redis.set(slot_key(stale, 0), "queued:lost-job", ex=SLOT_QUEUED_TTL_S - 120)
    redis.set(slot_key(young, 0), "queued:on-its-way", ex=SLOT_QUEUED_TTL_S - 5)
    kicks: list[Kick] = [(stale, "email", 1), (young, "email", 1), (waiting, "email", 1)]
    assert await kick(kicker, kicks, driver)
    assert queued_jobs(redis, "email") == {stale: [0], waiting: [0]}
    job_id = queued_job(redis.get(slot_key(stale, 0)))
    assert job_id not in (None, "lost-job") and redis.exists(f"rq:job:{job_id}")
    assert redis.ttl(slot_key(stale, 0)) > SLOT_QUEUED_TTL_S - 10
    assert redis.get(slot_key(young, 0)) == b"queued:on-its-way"
    assert queued_job(redis.get(slot_key(waiting, 0))) == waiting_job


@pytest.mark.parametrize("driver", ["blocking", "asyncio"])
async def test_a_slot_whose_job_a_dead_worker_took_is_taken_again(
        db: Any, redis: Redis, driver: str) -> None:
    """A worker killed after taking a job off the queue and before marking its slot
    `running` left `queued:<job>` naming a job that no longer waits: started (or failed,
    once RQ's cleanup has seen the worker gone). Past a minute such a slot is taken again;
    before, every kick and the reconciler found it held and the session waited out the
    marker's 15 minutes. A job waiting on a long queue keeps its slot however old its
    marker, and a started job's young marker is left (its worker may be marking it now)."""
    dead, abandoned, young, long_wait = sessions = [str(uuid.uuid4()) for _ in range(4)]
    kicker = Kicker(redis)
    for sid in sessions:  # one job each
        assert kicker.sessions([(sid, "email", 1)])
    jobs = {sid: queued_job(redis.get(slot_key(sid, 0))) for sid in sessions}
    queue = Queue("email", connection=redis)
    for sid, status in ((dead, JobStatus.STARTED), (abandoned, JobStatus.FAILED),
                        (young, JobStatus.STARTED)):
        job = Job.fetch(str(jobs[sid]), connection=redis)  # what a worker does as it starts
        queue.remove(job)
        job.set_status(status)
    for sid in (dead, abandoned, long_wait):
        redis.expire(slot_key(sid, 0), SLOT_QUEUED_TTL_S - 120)
    assert await kick(kicker, [(sid, "email", 1) for sid in sessions], driver)
    assert queued_jobs(redis, "email") == {dead: [0], abandoned: [0], long_wait: [0]}
    for sid in (dead, abandoned):
        job_id = queued_job(redis.get(slot_key(sid, 0)))
        assert job_id not in (None, jobs[sid]) and redis.exists(f"rq:job:{job_id}")
        assert redis.ttl(slot_key(sid, 0)) > SLOT_QUEUED_TTL_S - 10
    for sid in (young, long_wait):
        assert queued_job(redis.get(slot_key(sid, 0))) == jobs[sid]


@pytest.mark.parametrize("driver", ["blocking", "asyncio"])
async def test_sessions_kicked_together_share_jobs(db: Any, redis: Redis, driver: str) -> None:
    """40 sessions kicked at once (the API's batch of hand-offs, the reconciler's) go in
    ceil(40 / SESSIONS_PER_JOB) jobs, each session's slot marker naming the job that
    serves it; a session wanting three jobs gets three, in three different jobs."""
    sessions = [str(uuid.uuid4()) for _ in range(40)]
    wide = sessions[5]
    kicks: list[Kick] = [(sid, "email", 3 if sid == wide else 1) for sid in sessions]
    assert await kick(Kicker(redis), kicks, driver)
    jobs = Queue("email", connection=redis).get_jobs()
    assert len(jobs) == -(-42 // SESSIONS_PER_JOB)
    assert queued_jobs(redis, "email") == {sid: [0, 1, 2] if sid == wide else [0]
                                            for sid in sessions}
    for job in jobs:
        served = job_slots(job)
        assert len({sid for sid, _ in served}) == len(served) <= SESSIONS_PER_JOB
        for sid, n in served:
            assert queued_job(redis.get(slot_key(sid, n))) == job.id


def test_a_session_moving_back_leaves_a_job_it_shares(db: Any, redis: Redis) -> None:
    """A job whose turn is over takes its session's waiting jobs off the queue to kick
    them again at the back; a job shared with other sessions stays (taking it would
    take them too), its own job goes."""
    alone, shared, other = (str(uuid.uuid4()) for _ in range(3))
    kicker = Kicker(redis)
    assert kicker.sessions([(alone, "email", 1)])
    assert kicker.sessions([(shared, "email", 1), (other, "email", 1)])
    assert kicker.to_back(alone, "email") == 1
    assert kicker.to_back(shared, "email") == 0
    assert queued_jobs(redis, "email") == {shared: [0], other: [0]}
    assert redis.get(slot_key(alone, 0)) is None


async def test_sessions_sharing_jobs_are_each_delivered_once(
        api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink],
        procs: Procs, redis: Redis) -> None:
    """A burst of 60 submissions (whose hand-offs the API batches into shared jobs), then
    a worker: every session completes and every recipient gets one message."""
    _, sink = smtp_sink
    created = await asyncio.gather(*(submit(api, i) for i in range(60)))
    assert len(Queue("email", connection=redis).get_jobs()) < 60
    procs.worker()
    for sid in created:
        done = await api.wait_status(sid)
        assert done["counts"] == {"delivered": 1}, done
    assert sorted(r.rcpt for r in sink.received) == sorted(f"r{i}@example.com"
                                                            for i in range(60))


async def one_job_for(redis: Redis, sessions: list[str]) -> Job:
    """Forget the API's own hand-offs of these sessions and kick them in one batch: one
    shared job (what the API does with submissions that arrive together)."""
    for key in redis.scan_iter("hub:job:*"):
        redis.delete(key)
    redis.delete("rq:queue:email")
    assert Kicker(redis).sessions([(sid, "email", 1) for sid in sessions])
    (job,) = Queue("email", connection=redis).get_jobs()
    assert sorted(job_slots(job)) == sorted((sid, 0) for sid in sessions)
    return job


async def test_a_shared_job_marks_every_slot_running_as_it_starts(
        api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink],
        procs: Procs, redis: Redis) -> None:
    """Sessions waiting for their place in a shared job hold their slots `running` (with
    a heartbeat), not `queued` naming a job that has started: such a marker past a minute
    old is stale, and the next kick would queue a second job for the slot."""
    _, sink = smtp_sink
    sink.delay_s = 0.5
    sessions = [await submit(api, i) for i in range(10)]
    job = await one_job_for(redis, sessions)
    procs.worker()
    deadline = time.monotonic() + 20
    while not sink.received and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert sink.received, "nothing was delivered"
    markers = [redis.get(slot_key(sid, 0)) for sid in sessions]
    assert b"queued:" + job.id.encode() not in markers
    assert markers.count(b"running:" + job.id.encode()) > SESSIONS_AT_ONCE, markers  # waiting ones too
    for sid in sessions:
        assert (await api.wait_status(sid))["counts"] == {"delivered": 1}
    assert [redis.get(slot_key(sid, 0)) for sid in sessions] == [None] * 10


async def test_a_long_session_gives_its_place_in_a_shared_job_to_those_waiting(
        api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink],
        procs: Procs, redis: Redis) -> None:
    """Four 30-recipient sessions and a one-recipient one in one job, one message at a
    time at 0.1 s each: after its slice a long session gives way, so the short one is
    delivered while the long ones still have most of their work left (it waited behind
    them to the end before)."""
    _, sink = smtp_sink
    sink.delay_s = 0.1
    long_ = []
    for i in range(4):
        status, body = await api.post("/v1/sessions", {
            "transport": {"type": "email", "subject": "Hi", "message": "Hello"},
            "audience": [f"l{i}-{k}@example.com" for k in range(30)],
            "options": {"trigger": "immediate"}})
        assert status == 201, body
        long_.append(str(body["sessionId"]))
    short = await submit(api, 0)
    await one_job_for(redis, [*long_, short])
    procs.worker(HUB_SEND_CONCURRENCY="1")
    await api.wait_status(short)
    assert len(sink.received) < 4 * 30 * 0.6, len(sink.received)
    for sid in long_:
        assert (await api.wait_status(sid))["counts"] == {"delivered": 30}


async def test_a_session_whose_other_jobs_are_shared_still_gives_way(
        db: Any, redis: Redis) -> None:
    """A session past its slice gives way when other sessions' work waits on its queue.
    Its own waiting jobs do not count as others', but a job it shares with another
    session does: that session waits too."""
    running, partner, lone = (str(uuid.uuid4()) for _ in range(3))
    kicker = Kicker(redis)
    assert kicker.sessions([(running, "email", 1), (partner, "email", 1)])  # one job
    (job,) = Queue("email", connection=redis).get_jobs()
    assert shared_job(job.id)
    aredis = async_redis(REDIS_URL)
    try:
        turn = Turn(aredis, "email", running)
        turn.started -= JOB_SLICE_S
        assert await turn.over()  # the partner waits in the shared job
        redis.delete("rq:queue:email")
        assert kicker.sessions([(lone, "email", 1)])  # a job of its own
        assert not shared_job(queued_job(redis.get(slot_key(lone, 0))) or "")
        turn = Turn(aredis, "email", lone)
        turn.started -= JOB_SLICE_S
        assert not await turn.over()  # only its own job waits
    finally:
        await aredis.aclose()


async def test_a_kick_with_redis_away_answers_false_at_once() -> None:
    """The API's hand-off fails fast when Redis is away (the reconciler starts the
    session later): it answers False instead of raising."""
    kicker = Kicker(Redis.from_url(DEAD_REDIS, socket_timeout=1, socket_connect_timeout=1))
    aredis = async_redis(DEAD_REDIS, timeout_s=1, connect_timeout_s=1)
    try:
        started = time.monotonic()
        assert not await kicker.sessions_async([(str(uuid.uuid4()), "email", 1)], aredis)
        assert time.monotonic() - started < 5.0
    finally:
        await aredis.aclose()


async def test_a_burst_of_submissions_queues_exactly_one_job_per_session(
        api: Api, email_transport: dict[str, Any], redis: Redis) -> None:
    """200 submissions at once (the API batches their hand-offs): every session stored is
    on the queue once, and nothing else is."""

    created = await asyncio.gather(*(submit(api, i) for i in range(200)))
    assert len(set(created)) == 200
    assert queued_jobs(redis, "email") == {sid: [0] for sid in created}


async def test_counting_deliveries_never_scans_the_sessions_table(db: asyncpg.Pool) -> None:
    """The metrics triggers look each session up by its key. Planned on a small table they
    chose a hash join over a sequential scan of every session, and the cached plan went on
    scanning as the table grew: one full scan per delivery insert and update. PostgreSQL's
    auto_explain hands this connection the plan of every statement the triggers run."""
    plans: list[str] = []
    conn = await asyncpg.connect(DB_URL)  # its own: auto_explain stays loaded on it
    try:
        conn.add_log_listener(lambda _, message: plans.append(message.message))
        async with conn.transaction():
            await conn.execute("LOAD 'auto_explain'")
            for name, value in (("log_min_duration", "0"), ("log_nested_statements", "on"),
                                ("log_level", "notice")):
                await conn.execute(f"SET LOCAL auto_explain.{name} = '{value}'")
            app_id, tid = uuid.uuid4(), uuid.uuid4()
            await conn.execute("INSERT INTO apps (id, name, webhook_secret)"
                               " VALUES ($1, 'scan', 's')", app_id)
            await conn.execute(
                "INSERT INTO transports (id, app_id, name, type, provider, config, secrets)"
                " VALUES ($1, $2, 'smtp', 'email', 'smtp', '{}', '{}')", tid, app_id)
            for n in range(20):
                sid = uuid.uuid4()
                await conn.execute(
                    "INSERT INTO sessions (id, app_id, transport_id, transport_type, status,"
                    " trigger, instruction, retries, retry_intervals_s, audience_count,"
                    " duplicates_removed) VALUES ($1, $2, $3, 'email', 'queued', 'immediate',"
                    " '{}', 0, '{}', 2, 0)", sid, app_id, tid)
                await conn.execute(
                    "INSERT INTO deliveries (session_id, address, status) VALUES"
                    " ($1, $2, 'pending'), ($1, $3, 'pending')",
                    sid, f"a{n}@example.com", f"b{n}@example.com")
                await conn.execute("UPDATE deliveries SET status = 'in_progress'"
                                   " WHERE session_id = $1", sid)
            counted = await conn.fetchval(
                "SELECT sum(n) FROM metric_deltas WHERE metric = 'deliveries'"
                " AND transport = 'email' AND status = 'in_progress'")
    finally:
        await conn.close()
    assert counted == 40  # the triggers still count every delivery
    counting = [p for p in plans if "INSERT INTO metric_deltas" in p and "'deliveries'" in p]
    assert len(counting) == 40  # 20 inserts and 20 updates, each counted once
    assert not [p for p in counting if "Seq Scan on sessions" in p], counting[-1]


async def test_a_client_that_hangs_up_mid_body_is_logged_as_gone_not_as_an_outage(
        procs: Procs, make_app: Any) -> None:
    """aiohttp reports a client gone before its body arrived as ConnectionResetError;
    it once matched the middleware's "database unavailable" branch (a warning that sends an
    operator to PostgreSQL) and must not become an internal error either."""
    port = free_port()
    procs.api(port)
    app = await make_app("gone")
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + app.api_key.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"transport\": ")
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is reading the body
        writer.transport.abort()  # RST: gone
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and procs.logs().count("the client went away") < 3:
        await asyncio.sleep(0.1)
    logs = procs.logs()
    assert logs.count("POST /v1/sessions: the client went away") == 3, logs
    assert "database is unavailable" not in logs and "unhandled error" not in logs, logs
    async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{port}/v1/sessions",
            headers={"Authorization": f"Bearer {app.api_key}"},
            json={"transport": {"type": "email", "subject": "Hi", "message": "Hello"},
                  "audience": ["a@example.com"], "options": {"trigger": "manual"}}) as r:
        assert r.status == 422  # this app has no transport: answered, the API is fine


async def test_a_reconciler_pass_kicks_a_backlog_in_batches(
        api: Api, email_transport: dict[str, Any], redis: Redis, db: asyncpg.Pool,
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions stranded without jobs (Redis lost them) are each queued once more by one
    reconciler pass, a batch of them per set of Redis round trips (one slot read, one
    SET NX pipeline, one enqueue transaction), not one set per session."""

    created = set(await asyncio.gather(*(submit(api, i) for i in range(600))))
    redis.flushdb()  # Redis lost every job
    await db.execute("UPDATE deliveries SET next_attempt_at = now() - interval '1 minute'")

    class Counting(Kicker):
        batches: list[int] = []

        def sessions(self, kicks: Sequence[Kick]) -> bool:
            self.batches.append(len(kicks))
            return super().sessions(kicks)

    monkeypatch.setattr(reconciler, "KICK_BATCH", 250)
    async with db.acquire() as conn:
        done = await reconciler.reconcile(conn, Counting(redis), settings)
    assert set(done.kicked) == created
    assert Counting.batches == [250, 250, 100]
    assert queued_jobs(redis, "email") == {sid: [0] for sid in created}
