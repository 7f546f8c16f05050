"""The webhook outbox drain on the real database and real HTTP receivers: events whose
sends end together are recorded together (one transaction), and each event's outcome is
its own: delivered, or pending for its next try with the receiver's answer logged."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from typing import Any

import asyncpg

from hub.config import Settings
from hub.jobs import webhook_sender
from tests.helpers import WebhookReceiver


async def add_events(db: asyncpg.Pool, app_id: uuid.UUID, url: str, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    await db.execute(
        "INSERT INTO webhook_events (id, app_id, url, type, payload)"
        " SELECT id, $2, $3, 'test.event', jsonb_build_object('n', n)"
        " FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, n)", ids, app_id, url)
    return ids


async def test_each_event_once_with_its_own_outcome(
    db: asyncpg.Pool, make_app: Any, receiver: WebhookReceiver, settings: Settings,
) -> None:
    other = WebhookReceiver()
    await other.start()
    try:
        app = await make_app("acme")
        app_id = app.app_id
        first = await add_events(db, app_id, receiver.url, 40)
        second = await add_events(db, app_id, other.url, 12)
        receiver.fail_next = 9  # its first 9 answers are 500s
        drained = settings.model_copy(update={"webhook_retry_schedule": "0,600"})
        attempted, more = await webhook_sender._drain(drained)
    finally:
        await other.stop()

    assert (attempted, more) == (52, False)
    got = Counter(h["webhook-id"] for h, _, _ in receiver.requests + other.requests)
    assert got == Counter({str(i): 1 for i in first + second})  # each event exactly once
    bodies = sorted(json.loads(b)["n"] for _, b, _ in other.requests)
    assert bodies == list(range(1, 13))

    events = {r["id"]: r for r in await db.fetch("SELECT * FROM webhook_events")}
    logged = {r["event_id"]: r for r in await db.fetch("SELECT * FROM webhook_attempts")}
    assert len(logged) == 52 and all(r["attempt"] == 1 for r in logged.values())
    failed = {e for e, r in logged.items() if r["status_code"] == 500}
    assert len(failed) == 9 and failed <= set(first)
    for event_id, event in events.items():
        assert event["attempts"] == 1 and event["lease_until"] is None
        if event_id in failed:
            assert (event["status"], event["last_error"]) == ("pending", "HTTP 500")
            assert logged[event_id]["error"] == "HTTP 500"
            # the next try on the schedule (600 s), not at once
            wait = await db.fetchval("SELECT extract(epoch FROM $1 - now())",
                                     event["next_attempt_at"])
            assert 590 < wait <= 600
        else:
            assert (event["status"], event["last_error"]) == ("delivered", None)
            assert (logged[event_id]["status_code"], logged[event_id]["error"]) == (204, None)


async def test_an_event_deleted_while_it_is_sent_does_not_undo_the_others(
    db: asyncpg.Pool, make_app: Any, receiver: WebhookReceiver, settings: Settings,
) -> None:
    """An event can go while its request is out (its session was deleted). Its attempt has
    nothing to be logged against; the attempts ending with it are still logged, and the
    drain goes on (a failed write would have left them all to be sent again)."""
    app = await make_app("acme")
    ids = await add_events(db, app.app_id, receiver.url, 4)
    receiver.delay_s = 0.5  # all 4 out at once (4 per URL), answered together

    async def delete_one() -> None:
        while len(receiver.requests) < 4:
            await asyncio.sleep(0.01)
        await db.execute("DELETE FROM webhook_events WHERE id = $1", ids[0])
        # before any attempt of the batch is logged (else this shows nothing)
        assert await db.fetchval("SELECT count(*) FROM webhook_attempts") == 0

    deleting = asyncio.create_task(delete_one())
    attempted, more = await webhook_sender._drain(settings)
    await deleting
    assert (attempted, more) == (4, False)
    logged = {r["event_id"]: r["status_code"] for r in await db.fetch(
        "SELECT event_id, status_code FROM webhook_attempts")}
    assert logged == {i: 204 for i in ids[1:]}
    assert await db.fetchval("SELECT count(*) FROM webhook_events WHERE status = 'delivered'") == 3


async def test_a_claim_the_caps_cut_short_is_followed_by_another_at_once(
    db: asyncpg.Pool, make_app: Any, receiver: WebhookReceiver, settings: Settings,
    monkeypatch: Any,
) -> None:
    """The oldest due events all go to one slow URL: the first claim takes only its cap of
    them, though it looked at as many as it had room for. The drain claims again at once,
    so other URLs' events go out while the slow ones are still answering (not when one of
    them ends, nor at the next poll, here pushed out of reach)."""
    monkeypatch.setattr(webhook_sender, "POLL_S", 60.0)
    other = WebhookReceiver()
    await other.start()
    try:
        app = await make_app("acme")
        slow = await add_events(db, app.app_id, receiver.url, 6)
        fast = await add_events(db, app.app_id, other.url, 4)
        receiver.delay_s = 1.0
        capped = settings.model_copy(update={"webhook_concurrency": 6, "webhook_per_url": 2})
        attempted, more = await webhook_sender._drain(capped)
    finally:
        await other.stop()

    assert (attempted, more) == (10, False)
    assert sorted(h["webhook-id"] for h, _, _ in receiver.requests) == sorted(map(str, slow))
    assert sorted(h["webhook-id"] for h, _, _ in other.requests) == sorted(map(str, fast))
    first_slow = min(t for _, _, t in receiver.requests)
    last_fast = max(t for _, _, t in other.requests)
    assert last_fast - first_slow < 0.5  # the first slow answers came a second later


async def test_a_backlog_is_claimed_for_freed_slots_together_not_one_claim_per_send(
    db: asyncpg.Pool, make_app: Any, receiver: WebhookReceiver, settings: Settings,
    monkeypatch: Any,
) -> None:
    """Every slot full and many more events due: a claim that took all it had room for was
    not cut short, so the slots freed by ending sends are claimed for together (at most
    every CLAIM_GAP_S), not one claim (the outbox's costliest statement) per ended send."""
    claims = 0
    claim = webhook_sender._Pipeline._claim

    async def counted(self: Any, free: int) -> tuple[int, bool]:
        nonlocal claims
        claims += 1
        return await claim(self, free)

    monkeypatch.setattr(webhook_sender._Pipeline, "_claim", counted)
    app = await make_app("acme")
    await add_events(db, app.app_id, receiver.url, 200)
    receiver.jitter_s = 0.05  # answers end one by one
    slots = settings.model_copy(update={"webhook_concurrency": 8, "webhook_per_url": 8})
    attempted, more = await webhook_sender._drain(slots)
    assert (attempted, more) == (200, False)
    assert len(receiver.requests) == 200
    assert claims <= 120, f"{claims} claims for 200 events sent 8 at a time"
