"""Exactly once under slowness and faults (issue 7): a throttled provider, a slow SMTP
server, a send that raises, cancel racing with recordings, fair turns on a shared queue."""

from __future__ import annotations

import asyncio
import collections
import random
import time
from typing import Any

import aiohttp
import pytest
from redis import Redis

from hub.constants import MAX_PARALLEL_JOBS_PER_SESSION
from hub.dev.fake_http import HttpSink
from hub.dev.smtp import SmtpSink
from tests.conftest import Procs
from tests.helpers import Api, WebhookReceiver, eventually, free_port

pytestmark = pytest.mark.e2e


def email(audience: list[str], subject: str = "Hello", **options: Any) -> dict[str, Any]:
    return {"transport": {"type": "email", "subject": subject, "message": "Body text"},
            "audience": audience, "options": options}


def api_message(audience: list[str], **options: Any) -> dict[str, Any]:
    return {"transport": {"type": "api", "message": "Hi"}, "audience": audience,
            "options": options}


async def register_api(api: Api, sink: HttpSink, **config: Any) -> None:
    status, body = await api.post("/v1/transports", {
        "name": "gateway", "type": "api",
        "config": {"url": sink.url + "/send", "body": {"to": "{{address}}"}, **config}})
    assert status == 201, body


def numbers(n: int, prefix: str = "+97798120") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


@pytest.mark.timeout(240)
async def test_throttled_provider_gets_each_message_once(
    api: Api, sink: HttpSink, procs: Procs,
) -> None:
    """110 recipients at 1 message/s take 110 s, several leases (HUB_LEASE_S=10) long."""
    await register_api(api, sink, mps=1)
    procs.worker(HUB_LEASE_S="10")
    audience = numbers(110)
    created = await api.submit(api_message(audience))
    done = await api.wait_status(created["sessionId"], timeout_s=200)
    got = collections.Counter(s.body["to"] for s in sink.seen)
    assert {a: n for a, n in got.items() if n > 1} == {}, "duplicates"
    assert set(got) == set(audience)
    assert done["counts"] == {"delivered": 110}
    stamps = sorted(s.at for s in sink.seen)
    assert min(b - a for a, b in zip(stamps, stamps[1:], strict=False)) >= 0.9


@pytest.mark.timeout(120)
async def test_slow_smtp_server_gets_each_message_once(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
    db: Any,
) -> None:
    """0.4 s per message, 150 recipients, a 2 s lease: the campaign outlasts many leases."""
    _, sink = smtp_sink
    sink.delay_s = 0.4
    procs.worker(HUB_LEASE_S="2")
    audience = [f"slow{i}@example.com" for i in range(150)]
    created = await api.submit(email(audience))
    done = await api.wait_status(created["sessionId"], timeout_s=90)
    assert sink.duplicates() == {}
    assert {r.rcpt for r in sink.received} == set(audience)
    assert done["counts"] == {"delivered": 150}
    interrupted = await db.fetchval(
        "SELECT count(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
        " WHERE d.session_id = $1 AND a.outcome = 'interrupted'", created["sessionId"])
    assert interrupted == 0


async def test_a_send_that_raises_is_a_failed_attempt_not_a_stuck_session(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
    db: Any,
) -> None:
    """A value the transport cannot send (stored before validation refused it: a line
    break in a subject) fails that attempt with the error; the session ends."""
    procs.worker(HUB_LEASE_S="2")
    created = await api.submit(email(["x@example.com", "y@example.com"], trigger="manual",
                                     retries=1, retryIntervalMinutes="0"))
    sid = created["sessionId"]
    await db.execute("UPDATE sessions SET instruction = jsonb_set(instruction, '{subject}',"
                     " to_jsonb('Hi' || chr(10) || 'Bcc: victim@example.com'::text))"
                     " WHERE id = $1", sid)
    status, _ = await api.post(f"/v1/sessions/{sid}/trigger")
    assert status == 202
    done = await api.wait_status(sid, timeout_s=20)
    assert done["counts"] == {"failed": 2}
    rows = await api.deliveries(sid)
    for row in rows.values():
        assert row["attempts"] == 2  # the first try and its one retry, no more
        assert "internal error while sending" in row["error"], row["error"]
    outcomes = await db.fetch(
        "SELECT a.outcome FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
        " WHERE d.session_id = $1", sid)
    assert {r["outcome"] for r in outcomes} == {"failed"}


@pytest.mark.timeout(120)
async def test_cancel_racing_with_recordings_always_ends_the_session(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
    receiver: WebhookReceiver, db: Any,
) -> None:
    """Many sessions whose every attempt fails transiently and is retried at once; each is
    cancelled at a random moment. Each ends `cancelled` with its endedAt and its
    session.completed event; none keeps a delivery with work left."""
    _, sink = smtp_sink
    sessions = []
    for n in range(40):
        audience = [f"t{n}-{i}@example.com" for i in range(8)]
        for a in audience:
            sink.scripts[a] = ["451 4.3.0 try later"] * 10_000
        sessions.append(await api.submit(email(audience, retries=100,
                                               retryIntervalMinutes="0",
                                               webhookUrl=receiver.url)))
    procs.worker()
    procs.worker()
    await eventually(lambda: _now(sum(len(v) for v in sink.refused.values()) > 500), 30,
                     "attempts streaming")

    async def cancel(sid: str) -> None:
        await asyncio.sleep(random.uniform(0, 3))
        status, body = await api.post(f"/v1/sessions/{sid}/cancel")
        assert status in (202, 409), body

    await asyncio.gather(*(cancel(s["sessionId"]) for s in sessions))
    for s in sessions:
        done = await api.wait_status(s["sessionId"], ("cancelled",), timeout_s=30)

        async def ended(sid: str = s["sessionId"]) -> dict[str, Any] | None:
            got = await api.session(sid)
            return got if got["endedAt"] else None
        done = await eventually(ended, 30, f"session {s['sessionId']} to end")
        assert set(done["counts"]) <= {"cancelled", "failed", "delivered"}, done["counts"]
    left = await db.fetchval("SELECT count(*) FROM deliveries WHERE status IN"
                             " ('pending', 'retry_scheduled', 'in_progress')")
    assert left == 0

    async def all_events() -> bool:
        got = {e["data"]["sessionId"] for e in receiver.events("session.completed")}
        return got >= {s["sessionId"] for s in sessions}
    await eventually(all_events, 30, "a session.completed event for every session")


@pytest.mark.timeout(120)
async def test_a_long_throttled_campaign_does_not_hold_up_another_app(
    api: Api, sink: HttpSink, procs: Procs, make_app: Any, http: aiohttp.ClientSession,
    redis: Redis, db: Any,
) -> None:
    """One worker; app A runs an hour-long campaign (3,600 messages at 1/s); app B's 10
    messages on the same queue are done within a few seconds, and the queue stays short."""
    await register_api(api, sink, mps=1)
    procs.worker()
    slow = await api.submit(api_message(numbers(3600)))
    await eventually(lambda: _now(len(sink.seen) >= 3), 20, "the slow campaign to start")

    other = Api(http, api.base, await make_app("beta"))
    fast_sink = HttpSink()
    await fast_sink.start(free_port())
    try:
        await register_api(other, fast_sink)
        depth = []
        started = time.monotonic()
        quick = await other.submit(api_message(numbers(10, "+97798130")))
        while time.monotonic() - started < 15:
            depth.append(redis.llen("rq:queue:api"))
            got = await other.session(quick["sessionId"])
            if got["status"] == "completed":
                break
            await asyncio.sleep(0.2)
        waited = time.monotonic() - started
        assert got["status"] == "completed", f"app B still {got['status']} after {waited:.1f}s"
        assert waited < 6, f"app B waited {waited:.1f}s behind app A"
        for _ in range(60):  # the campaign goes on; its queue never fills with re-kicks
            depth.append(redis.llen("rq:queue:api"))
            await asyncio.sleep(0.2)
        # At most the session's job slots, plus app B's job while it waited.
        assert max(depth) <= MAX_PARALLEL_JOBS_PER_SESSION + 1, depth
    finally:
        await fast_sink.stop()
        await api.post(f"/v1/sessions/{slow['sessionId']}/cancel")
    assert len({s.body["to"] for s in sink.seen}) == len(sink.seen)


async def _now(value: Any) -> Any:
    return value


async def test_bulk_batches_fill_beyond_the_send_concurrency(
    api: Api, sink: HttpSink, procs: Procs,
) -> None:
    """A bulk API transport taking 40 recipients a request is sent full batches even when
    the worker sends only 4 things at a time."""
    status, body = await api.post("/v1/transports", {"name": "bulk", "type": "api", "config": {
        "url": sink.url + "/bulk", "bulk": {"max": 40},
        "body": {"messages": ["{{each}}", {"to": "{{address}}"}]}}})
    assert status == 201, body
    procs.worker(HUB_SEND_CONCURRENCY="4")
    audience = numbers(120, "+97798140")
    created = await api.submit(api_message(audience))
    done = await api.wait_status(created["sessionId"], timeout_s=30)
    assert done["counts"] == {"delivered": 120}
    sizes = sorted(len(s.body["messages"]) for s in sink.seen)
    assert sum(sizes) == 120 and len(sizes) <= 4, sizes
