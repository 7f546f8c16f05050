"""End to end: one app's slow, dead or unsendable webhook receiver never holds up another
app's webhooks; each of its events is still attempted on its schedule and logged."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
import pytest

from hub.dev.smtp import SmtpSink
from tests.conftest import Procs
from tests.helpers import Api, WebhookReceiver, eventually

pytestmark = pytest.mark.e2e

PER_URL = 4  # the default HUB_WEBHOOK_PER_URL
ATTEMPTS = 4  # the tests' HUB_WEBHOOK_RETRY_SCHEDULE "0,1,2,3"


def email(audience: list[str], **options: Any) -> dict[str, Any]:
    return {"transport": {"type": "email", "subject": "Hello", "message": "Body text"},
            "audience": audience, "options": options}


async def _true(value: Any) -> Any:
    return value


def max_overlap(spans: Sequence[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one time (an end sorts before a start at the same time)."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    open_now = peak = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak


@pytest.mark.timeout(120)
async def test_slow_receiver_of_one_app_does_not_delay_another_apps_webhooks(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
    receiver: WebhookReceiver, make_app: Any, http: aiohttp.ClientSession, db: asyncpg.Pool,
) -> None:
    slow = WebhookReceiver()
    slow.delay_s = 8  # answers after the worker's 6 s timeout: every attempt times out
    await slow.start()
    try:
        procs.start("worker", "--queues", "email")
        procs.start("worker", "--queues", "webhooks", HUB_WEBHOOK_TIMEOUT_S="6")
        a = await api.submit(email([f"a{i}@example.com" for i in range(60)], webhookUrl=slow.url))
        await api.wait_status(a["sessionId"])
        await eventually(lambda: _true(slow.requests), 15, "app A's receiver is being called")

        b_api = Api(http, api.base, await make_app("bravo"))
        status, body = await b_api.post("/v1/transports", {
            "name": "smtp", "type": "email",
            "config": {"host": "127.0.0.1", "port": smtp_sink[0], "from": "hub@example.com"}})
        assert status == 201, body
        b = await b_api.submit(email(["b1@example.com", "b2@example.com", "b3@example.com"],
                                     webhookUrl=receiver.url))
        b_done = await b_api.wait_status(b["sessionId"])
        ended = datetime.fromisoformat(b_done["endedAt"]).timestamp()
        await eventually(lambda: _true(len(receiver.requests) >= 4), 15, "app B's 4 webhooks")
        late = max(at for _, _, at in receiver.requests) - ended
        assert late < 1.5, f"app B's last webhook came {late:.1f}s after its session completed"
        assert len(receiver.requests) == 4

        slow.delay_s = 0  # A's receiver recovers: every A event gets through, none lost
        a_app = api.app.app_id
        await eventually(lambda: _all_delivered(db, a_app, 61), 40, "all of app A's webhooks")
    finally:
        await slow.stop()

    rows = await db.fetch(
        "SELECT e.id, w.attempt, w.started_at, w.ended_at, w.status_code, w.error"
        " FROM webhook_attempts w JOIN webhook_events e ON e.id = w.event_id"
        " WHERE e.app_id = $1 ORDER BY e.id, w.attempt", a_app)
    assert max_overlap([(r["started_at"], r["ended_at"]) for r in rows]) <= PER_URL
    timed_out = {r["id"] for r in rows if r["status_code"] is None}
    assert timed_out, "the first attempts at app A's receiver should have timed out"
    assert all("Timeout" in r["error"] for r in rows if r["status_code"] is None)
    seen: dict[str, int] = {}
    for headers, _, _ in slow.requests:
        seen[headers["webhook-id"]] = seen.get(headers["webhook-id"], 0) + 1
    for event_id in timed_out:  # retried with the same webhook-id, then answered 204
        tries = [r for r in rows if r["id"] == event_id]
        assert [r["attempt"] for r in tries] == list(range(1, len(tries) + 1))
        assert tries[-1]["status_code"] == 204
        assert seen[str(event_id)] == len(tries)


async def _all_delivered(db: asyncpg.Pool, app_id: Any, count: int) -> bool:
    done = await db.fetchval("SELECT count(*) FROM webhook_events WHERE app_id = $1"
                             " AND status = 'delivered'", app_id)
    return bool(done == count)


BAD_URLS = [
    "http://127.0.0.1:99999/hook",             # port out of range
    "http://user:s3cret@127.0.0.1:99999/hook",  # the same, with credentials
    "http://user:s3cret@[::1/hook",             # malformed IPv6 host
    "ftp://user:s3cret@127.0.0.1/hook",         # refused by the guard
    "http://",                                  # no host
]


@pytest.mark.timeout(90)
async def test_unsendable_webhook_urls_fail_on_schedule_without_blocking_others(
    db: asyncpg.Pool, make_app: Any, procs: Procs, receiver: WebhookReceiver,
) -> None:
    mallory, bravo = await make_app("mallory"), await make_app("bravo")
    bad = [await _event(db, mallory.app_id, url) for url in BAD_URLS for _ in range(3)]
    good = [await _event(db, bravo.app_id, receiver.url) for _ in range(10)]
    procs.worker()

    await eventually(lambda: _true(len(receiver.requests) >= len(good)), 15,
                     "app B's webhooks while app M's are unsendable")
    assert sorted(h["webhook-id"] for h, _, _ in receiver.requests) == sorted(map(str, good))

    async def all_failed() -> bool:
        n = await db.fetchval("SELECT count(*) FROM webhook_events WHERE status = 'failed'")
        return bool(n == len(bad))
    await eventually(all_failed, 30, "every unsendable event marked failed")
    events = {r["id"]: r for r in await db.fetch("SELECT * FROM webhook_events")}
    attempts = await db.fetch("SELECT * FROM webhook_attempts ORDER BY event_id, attempt")
    for event_id in bad:
        logged = [a for a in attempts if a["event_id"] == event_id]
        assert [a["attempt"] for a in logged] == list(range(1, ATTEMPTS + 1))
        assert events[event_id]["attempts"] == ATTEMPTS
        for text in [a["error"] for a in logged] + [events[event_id]["last_error"]]:
            assert text and len(text) <= 200 and "s3cret" not in text and "user" not in text
    for event_id in good:
        assert events[event_id]["status"] == "delivered" and events[event_id]["attempts"] == 1
    assert "Traceback" not in procs.logs()


async def _event(db: asyncpg.Pool, app_id: Any, url: str) -> uuid.UUID:
    """An event as the outbox writes it (the API may refuse such URLs at submission)."""
    event_id = uuid.uuid4()
    payload = {"type": "session.completed", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
               "data": {"sessionId": str(uuid.uuid4()), "status": "completed"}}
    await db.execute("INSERT INTO webhook_events (id, app_id, url, type, payload)"
                     " VALUES ($1, $2, $3, 'session.completed', $4)",
                     event_id, app_id, url, payload)
    return event_id
