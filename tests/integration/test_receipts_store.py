"""Receipts in the store, against the real database: a receipt racing with the recording
of its message id is applied exactly once whichever commits first; stranded and stale
early receipts are dealt with by the reconciler's calls."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from hub.retry import decide
from hub.store import claims, deliveries, receipts
from hub.store.claims import Claimed
from hub.store.db import connect
from hub.store.deliveries import Outcome
from hub.transports.base import Result
from hub.transports.twilio import receipt_result
from tests.conftest import DB_URL
from tests.e2e.test_twilio import sms
from tests.helpers import Api, waiting_for_a_lock

OWNER = "job:test"
UNDELIVERED = receipt_result("undelivered", "30003", None)
DELIVERED = receipt_result("delivered", None, None)
assert UNDELIVERED is not None and DELIVERED is not None


async def _claimed(api: Api, db: asyncpg.Pool, audience: list[str],
                   take: int | None = None) -> tuple[uuid.UUID, list[Claimed]]:
    """A running session whose deliveries (the first `take`, or all) are claimed, as a
    worker holds them mid-send."""
    created = await api.submit(sms(audience, trigger="manual"))
    sid = uuid.UUID(created["sessionId"])
    await db.execute("UPDATE sessions SET status = 'running' WHERE id = $1", sid)
    await db.execute("UPDATE deliveries SET next_attempt_at = now() WHERE session_id = $1", sid)
    wanted = len(audience) if take is None else take
    async with db.acquire() as conn:
        claimed = await claims.claim(conn, sid, wanted, 60, OWNER)
    assert len(claimed) == wanted
    return sid, claimed


async def _record(conn: asyncpg.Connection, item: Claimed, ref: str) -> None:
    """What the engine's recorder does for a message the provider accepted."""
    await _record_all(conn, [(item, ref)])


async def _record_all(conn: asyncpg.Connection, sent: list[tuple[Claimed, str]]) -> None:
    """The recorder's batch: these messages accepted by the provider, with their ids."""
    outcomes = []
    for item, ref in sent:
        result = Result("sent", provider_ref=ref, receipt_s=3600)
        decision = decide(result, tries=item.tries_before + 1, retries=0, intervals_s=[60])
        outcomes.append(Outcome(item, result, decision, datetime.now(UTC)))
    sid = await conn.fetchval("SELECT session_id FROM deliveries WHERE id = $1",
                              sent[0][0].recipient.delivery_id)
    await deliveries.record(conn, sid, outcomes, owner=OWNER, report_base="")


async def _statuses(db: asyncpg.Pool, sid: uuid.UUID) -> dict[str, tuple[str, str | None]]:
    rows = await db.fetch("SELECT address, status, outcome FROM deliveries WHERE session_id = $1",
                          sid)
    return {r["address"]: (r["status"], r["outcome"]) for r in rows}


async def test_a_receipt_racing_with_the_recording_of_its_id_is_never_lost(
    api: Api, db: asyncpg.Pool, twilio_transport: Any,
) -> None:
    transport = await twilio_transport()
    tid = uuid.UUID(transport["id"])
    audience = [f"+1415555{i:04d}" for i in range(120)]
    sid, claimed = await _claimed(api, db, audience)
    base = "http://127.0.0.1"

    async def worker(item: Claimed, ref: str) -> None:
        await asyncio.sleep(random.uniform(0, 0.05))
        async with db.acquire() as conn:
            await _record(conn, item, ref)
            await receipts.apply_early(conn, tid, [ref], base)

    async def callback(ref: str) -> str:
        await asyncio.sleep(random.uniform(0, 0.05))
        async with db.acquire() as conn:
            done = await receipts.apply_many(conn, [(tid, ref, UNDELIVERED)], base)
        return done[(tid, ref)]

    refs = [f"SM{uuid.uuid4().hex}" for _ in claimed]
    answers = await asyncio.gather(*(worker(i, r) for i, r in zip(claimed, refs, strict=True)),
                                   *(callback(r) for r in refs))
    assert set(answers[len(refs):]) <= {"applied", "stored"}
    assert await _statuses(db, sid) == dict.fromkeys(audience, ("failed", "undelivered"))
    assert await db.fetchval("SELECT count(*) FROM early_receipts") == 0


async def test_another_transports_receipt_is_kept_apart_and_purged(
    api: Api, db: asyncpg.Pool, twilio_transport: Any,
) -> None:
    transport = await twilio_transport()
    tid = uuid.UUID(transport["id"])
    sid, [item] = await _claimed(api, db, ["+14155550301"])
    async with db.acquire() as conn:
        await _record(conn, item, "SM-ours")
        elsewhere = uuid.uuid4()
        done = await receipts.apply_many(
            conn, [(elsewhere, "SM-ours", UNDELIVERED), (tid, "SM-unknown", UNDELIVERED)], "")
        assert done == {(elsewhere, "SM-ours"): "stored", (tid, "SM-unknown"): "stored"}
        assert await receipts.apply_early(conn, tid, ["SM-ours"], "") == 0
        assert await _statuses(db, sid) == {"+14155550301": ("in_progress", "sent")}
        assert await receipts.purge_early(conn) == 0
        await conn.execute("UPDATE early_receipts SET received_at = now() - interval '3 days'"
                           " WHERE provider_ref = 'SM-unknown'")
        assert await receipts.purge_early(conn) == 1
        left = await conn.fetch("SELECT transport_id, provider_ref FROM early_receipts")
        assert [(r["transport_id"], r["provider_ref"]) for r in left] == [(elsewhere, "SM-ours")]


async def test_an_early_receipt_stranded_by_a_stopped_worker_is_applied_by_the_reconciler(
    api: Api, db: asyncpg.Pool, twilio_transport: Any,
) -> None:
    transport = await twilio_transport()
    tid = uuid.UUID(transport["id"])
    sid, [item] = await _claimed(api, db, ["+14155550302"])
    async with db.acquire() as conn:
        assert await receipts.apply_many(conn, [(tid, "SM-early", UNDELIVERED)], "") == {
            (tid, "SM-early"): "stored"}
        await _record(conn, item, "SM-early")  # ... and the worker stops before apply_early
        assert await receipts.expire(conn, "") == 1
    assert await _statuses(db, sid) == {"+14155550302": ("failed", "undelivered")}


async def test_a_recording_written_again_keeps_the_receipt_that_came_between(
    api: Api, db: asyncpg.Pool, twilio_transport: Any,
) -> None:
    """A worker whose commit reply was lost writes its chunk again; the receipt applied in
    between stays the attempt's outcome (the delivery was guarded by its claim already)."""
    transport = await twilio_transport()
    tid = uuid.UUID(transport["id"])
    sid, [item] = await _claimed(api, db, ["+14155550403"])
    async with db.acquire() as conn:
        await _record(conn, item, "SM-twice")
        assert await receipts.apply_many(conn, [(tid, "SM-twice", DELIVERED)], "") == {
            (tid, "SM-twice"): "applied"}
        await _record(conn, item, "SM-twice")
    assert await _statuses(db, sid) == {"+14155550403": ("delivered", "delivered")}
    attempts = await db.fetch("SELECT a.outcome FROM attempts a JOIN deliveries d"
                              " ON d.id = a.delivery_id WHERE d.session_id = $1", sid)
    assert [a["outcome"] for a in attempts] == ["delivered"]


async def test_a_result_recorded_after_its_session_failed_is_kept_on_its_attempt(
    api: Api, db: asyncpg.Pool, twilio_transport: Any,
) -> None:
    """Another job failed the session's content while this message was out: the delivery
    stays failed (its claim is gone), but the attempt shows what the provider did (usage
    counts the segments of accepted messages from it)."""
    await twilio_transport()
    sid, [item] = await _claimed(api, db, ["+14155550404"])
    async with db.acquire() as conn:
        assert await deliveries.fail_all(conn, sid, "the content could not be prepared") == 1
        await _record(conn, item, "SM-late")
    assert await _statuses(db, sid) == {"+14155550404": ("failed", "failed")}
    attempt = await db.fetchrow("SELECT a.outcome, a.provider_ref FROM attempts a JOIN"
                                " deliveries d ON d.id = a.delivery_id WHERE d.session_id = $1",
                                sid)
    assert (attempt["outcome"], attempt["provider_ref"]) == ("sent", "SM-late")


async def test_a_late_duplicate_receipt_and_a_postponed_session_do_not_deadlock(
    api: Api, db: asyncpg.Pool, twilio_transport: Any,
) -> None:
    """A batch of receipts settles one delivery and also carries a late duplicate for
    another of the session's deliveries, already waiting to be retried. The batch locked
    both deliveries, then waited for the session's row to check completion, which a job
    postponing the session (its content failed to prepare) held while it waited for the
    duplicate's delivery: PostgreSQL broke the deadlock by failing one of them. A batch now
    locks only the deliveries still waiting for a receipt."""
    transport = await twilio_transport()
    tid = uuid.UUID(transport["id"])
    sid, [first, second] = await _claimed(api, db, ["+14155550401", "+14155550402"])
    await db.execute("UPDATE sessions SET retries = 1 WHERE id = $1", sid)
    async with db.acquire() as conn:
        await _record_all(conn, [(first, "SM-first"), (second, "SM-second")])
        assert await receipts.apply_many(conn, [(tid, "SM-second", UNDELIVERED)], "") == {
            (tid, "SM-second"): "applied"}
    assert (await _statuses(db, sid))["+14155550402"] == ("retry_scheduled", "undelivered")

    async with db.acquire() as holder, db.acquire() as batch, db.acquire() as job:
        async with holder.transaction():  # holds the batch between its locks and its check
            await holder.execute("SELECT FROM attempts WHERE delivery_id = $1 FOR UPDATE",
                                 first.recipient.delivery_id)
            settling = asyncio.create_task(receipts.apply_many(
                batch, [(tid, "SM-first", DELIVERED), (tid, "SM-second", UNDELIVERED)], ""))
            await waiting_for_a_lock(db, batch, "the receipt batch")
            postponing = asyncio.create_task(deliveries.postpone(job, sid, "media timed out"))
            # the postponing commits (it needs no lock the batch holds), or waits for one
            await waiting_for_a_lock(db, job, "the postponing job", or_done=postponing)
        done = await asyncio.gather(settling, postponing, return_exceptions=True)

    assert not [e for e in done if isinstance(e, BaseException)], done
    settled, delay = done
    assert settled == {(tid, "SM-first"): "applied", (tid, "SM-second"): "ignored"}
    assert delay is not None
    assert await _statuses(db, sid) == {"+14155550401": ("delivered", "delivered"),
                                        "+14155550402": ("retry_scheduled", "undelivered")}
    error = await db.fetchval("SELECT error FROM deliveries WHERE address = $1"
                              " AND session_id = $2", "+14155550402", sid)
    assert error.startswith(f"waiting {delay:g} s to try again")


async def test_a_big_session_just_loaded_is_settled_without_reading_all_its_rows(
    api: Api, db: asyncpg.Pool, twilio_transport: Any,
) -> None:
    """A campaign is loaded and sent, and its receipts come back, before autovacuum has
    analysed the rows just written (the planner knows nothing of them). Recording message
    ids and applying receipts must still go to their rows by index: a pass over the
    deliveries per batch costs a million-recipient session a second of database time for
    every batch of callbacks."""
    transport = await twilio_transport()
    tid = uuid.UUID(transport["id"])
    sid, claimed = await _claimed(  # valid Nepali mobiles
        api, db, [f"+9779810{i:06d}" for i in range(20_000)], take=100)
    async with db.acquire() as conn:
        await conn.execute(  # the rest were sent earlier: their message ids are indexed
            "UPDATE deliveries SET status = 'delivered', provider_ref = 'SM' || md5(id::text)"
            " WHERE session_id = $1 AND status = 'pending'", sid)
        await conn.execute("DELETE FROM pg_statistic WHERE starelid = 'deliveries'::regclass")
    sent = [(item, f"SM{uuid.uuid4().hex}") for item in claimed]
    conn = await connect(DB_URL)  # no plan cached from before
    try:
        async with conn.transaction():
            await _record_all(conn, sent)
            done = await receipts.apply_many(conn, [(tid, ref, DELIVERED) for _, ref in sent], "")
            scanned = await conn.fetchval(
                "SELECT seq_tup_read FROM pg_stat_xact_user_tables WHERE relname = 'deliveries'")
    finally:
        await conn.close()
        await db.execute("ANALYZE deliveries")  # statistics back for the tests after this one
    assert len(done) == 100 and set(done.values()) == {"applied"}
    assert scanned == 0
    statuses = await _statuses(db, sid)
    assert {statuses[item.recipient.address] for item, _ in sent} == {("delivered", "delivered")}


async def _fail_after(conn: asyncpg.Connection, sid: uuid.UUID, delay: float) -> int:
    await asyncio.sleep(delay)
    return await deliveries.fail_all(conn, sid, "the content could not be prepared")


async def test_failing_a_session_and_a_receipt_batch_do_not_deadlock(
    api: Api, db: asyncpg.Pool, twilio_transport: Any,
) -> None:
    """A job fails a session's content (`fail_all`) while a batch of receipts settles its
    deliveries. The batch locks them in id order; `fail_all` took them in the order it
    found them (here the reverse: each was recorded later than the next), so each could
    hold what the other waited for."""
    transport = await twilio_transport()
    tid = uuid.UUID(transport["id"])
    for round_, delay in enumerate((0.0, 0.005, 0.01, 0.02)):
        audience = [f"+1415556{round_}{i:03d}" for i in range(600)]
        sid, claimed = await _claimed(api, db, audience)
        async with db.acquire() as conn:
            for item in reversed(claimed):  # the newest row versions for the lowest ids
                await _record(conn, item, f"SM-{round_}-{item.recipient.delivery_id}")

        batch = [(tid, f"SM-{round_}-{item.recipient.delivery_id}", DELIVERED)
                 for item in claimed]
        async with db.acquire() as settling, db.acquire() as failing:
            done = await asyncio.gather(
                receipts.apply_many(settling, batch, ""),
                _fail_after(failing, sid, delay), return_exceptions=True)
        assert not [e for e in done if isinstance(e, BaseException)], done
        statuses = {status for status, _ in (await _statuses(db, sid)).values()}
        assert statuses <= {"delivered", "failed"}
