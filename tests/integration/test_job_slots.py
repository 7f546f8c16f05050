"""A delivery job's slot marker belongs to the job it names: a job that starts leaves its
slot to another job that runs it, takes it from one only queued for it, and neither its
heartbeat nor its end touches another job's marker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from rq import Queue
from rq.job import Job, JobStatus

from hub.aredis import async_redis
from hub.dev.smtp import SmtpSink
from hub.jobs.queueing import DELIVER_FUNC, queued_job, shared_job, slot_key
from hub.jobs.slots import Slot
from tests.conftest import REDIS_URL, Procs
from tests.helpers import Api

pytestmark = pytest.mark.e2e


@pytest.fixture
async def aredis() -> AsyncIterator[AsyncRedis]:
    client = async_redis(REDIS_URL)
    yield client
    await client.aclose()


def fresh_slot() -> tuple[str, str]:
    """A new session id and the key of its first slot."""
    sid = str(uuid.uuid4())
    return sid, slot_key(sid, 0)


async def finished(redis: Redis, job_id: str, timeout_s: float = 30) -> Job:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = Job.fetch(job_id, connection=redis)
        if job.get_status() in (JobStatus.FINISHED, JobStatus.FAILED):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


async def test_a_job_whose_slot_went_to_another_job_leaves_the_session_to_it(
        api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink],
        procs: Procs, redis: Redis) -> None:
    """The API's job for a session waits on the queue; meanwhile another job runs the
    slot (the job was given it when the first one's marker was judged stale). The first
    job sends nothing and leaves the marker to the other job, which delivers the session
    once."""
    _, sink = smtp_sink
    status, body = await api.post("/v1/sessions", {
        "transport": {"type": "email", "subject": "Hi", "message": "Hello"},
        "audience": ["a@example.com", "b@example.com"], "options": {"trigger": "immediate"}})
    assert status == 201, body
    sid = str(body["sessionId"])
    first = queued_job(redis.get(slot_key(sid, 0)))
    assert first is not None
    redis.set(slot_key(sid, 0), "running:the-other-job", ex=900)
    procs.worker()
    job = await finished(redis, first)
    assert job.get_status() == JobStatus.FINISHED
    answer = job.return_value()
    answer = answer[sid] if shared_job(first) else answer
    assert answer == {"sent": 0, "reason": "other jobs serve this session"}
    assert redis.get(slot_key(sid, 0)) == b"running:the-other-job"
    assert sink.received == []
    Queue("email", connection=redis).enqueue(DELIVER_FUNC, sid, 0, job_id="the-other-job")
    done = await api.wait_status(sid)
    assert done["counts"] == {"delivered": 2}, done
    assert sorted(m.rcpt for m in sink.received) == ["a@example.com", "b@example.com"]
    assert redis.get(slot_key(sid, 0)) is None


async def test_a_slot_retaken_meanwhile_is_left_to_its_new_job(
        redis: Redis, aredis: AsyncRedis) -> None:
    """A running job's heartbeat and release change the marker only while it names
    that job; a lapsed marker is taken back by the heartbeat."""
    sid, key = fresh_slot()
    redis.set(key, "queued:job-1", ex=900)
    slot = Slot(aredis, sid, 0, "job-1")
    assert await slot.take()
    assert redis.get(key) == b"running:job-1"
    redis.delete(key)  # lapsed: nobody else holds it
    assert await slot.refresh()
    assert redis.get(key) == b"running:job-1"
    redis.set(key, "running:job-2", ex=15)  # given to another job meanwhile
    assert not await slot.refresh()
    await slot.release()
    assert redis.get(key) == b"running:job-2"
    assert not await Slot(aredis, sid, 0, "job-3").take()  # kicked for it: not its own
    assert redis.get(key) == b"running:job-2"


async def test_a_job_that_starts_takes_its_slot_from_one_that_only_waits(
        redis: Redis, aredis: AsyncRedis) -> None:
    """A waiting job's marker lapses after its 15 minutes even while the job still waits;
    a kick then queues another job for the slot at the back. The job that starts first
    serves the session (the later one finds it running and ends), rather than giving way
    to a job a whole queue behind; and a marker naming a job that never reached the
    queue does not hold it up either."""
    sid, key = fresh_slot()
    redis.set(key, "queued:kicked-later", ex=900)
    first = Slot(aredis, sid, 0, "waited-long")
    assert await first.take()
    assert redis.get(key) == b"running:waited-long"
    assert not await Slot(aredis, sid, 0, "kicked-later").take()
    await first.release()
    assert redis.get(key) is None


async def test_a_heartbeat_keeps_trying_and_takes_the_slot_back_once_free(
        redis: Redis, aredis: AsyncRedis) -> None:
    """A job whose marker another running job holds keeps beating: once that job ends,
    its next beat marks the slot again (a kick would otherwise add a job beyond the
    session's slots)."""
    sid, key = fresh_slot()
    redis.set(key, "queued:job-1", ex=900)
    slot = Slot(aredis, sid, 0, "job-1")
    slot.beat_s = 0.1
    assert await slot.take()
    redis.set(key, "running:job-2", ex=15)
    await asyncio.sleep(0.35)
    assert redis.get(key) == b"running:job-2"
    redis.delete(key)  # job 2 ended
    await asyncio.sleep(0.35)
    assert redis.get(key) == b"running:job-1"
    await slot.release()
    assert redis.get(key) is None
