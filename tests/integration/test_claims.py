"""Claims on the real database: a claim that was taken over can no longer be renewed,
given back or recorded by its first owner; attempts cut short too often are given up."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from hub.results import Result
from hub.retry import Decision
from hub.store import claims, deliveries
from hub.store.claims import MAX_INTERRUPTIONS
from hub.store.deliveries import Outcome
from tests.helpers import Api


async def running_session(api: Api, audience: list[str]) -> uuid.UUID:
    created = await api.submit({"transport": {"type": "email", "subject": "S", "message": "M"},
                                "audience": audience, "options": {"trigger": "manual"}})
    status, _ = await api.post(f"/v1/sessions/{created['sessionId']}/trigger")
    assert status == 202  # no worker runs: only this test claims
    return uuid.UUID(created["sessionId"])


async def expire(db: asyncpg.Pool, session_id: uuid.UUID) -> None:
    await db.execute("UPDATE deliveries SET lease_until = now() - interval '1 second'"
                     " WHERE session_id = $1 AND status = 'in_progress'", session_id)


async def test_a_claim_taken_over_cannot_be_renewed_given_back_or_recorded(
    api: Api, email_transport: dict[str, Any], db: asyncpg.Pool,
) -> None:
    sid = await running_session(api, ["a@example.com"])
    async with db.acquire() as conn:
        [first] = await claims.claim(conn, sid, 10, 30, "job:first")
        await expire(db, sid)
        [second] = await claims.claim(conn, sid, 10, 30, "job:second")
        assert second.recipient.attempt == first.recipient.attempt + 1

        assert await claims.renew(conn, [first], 30, "job:first") == set()
        assert await claims.give_back(conn, sid, [first], "job:first") == 0
        late = Outcome(first, Result("delivered", delivered=True), Decision("delivered"),
                       datetime.now(UTC))
        recorded = await deliveries.record(conn, sid, [late], owner="job:first", report_base="")
        assert recorded.final == []
        row = await conn.fetchrow("SELECT * FROM deliveries WHERE session_id = $1", sid)
        assert (row["status"], row["attempts"], row["claimed_by"]) == ("in_progress", 2,
                                                                        "job:second")
        assert await claims.renew(conn, [second], 30, "job:second") == {
            second.recipient.delivery_id}
        assert await claims.give_back(conn, sid, [second], "job:second") == 1
        row = await conn.fetchrow("SELECT * FROM deliveries WHERE session_id = $1", sid)
        assert (row["status"], row["attempts"], row["claimed_by"]) == ("pending", 1, None)
        outcomes = await conn.fetch("SELECT attempt, outcome FROM attempts WHERE delivery_id = $1"
                                    " ORDER BY attempt", row["id"])
        # The late result still tells what the first attempt did (a resend is visible).
        assert [(r["attempt"], r["outcome"]) for r in outcomes] == [(1, "delivered")]


async def test_attempts_interrupted_too_often_are_given_up(
    api: Api, email_transport: dict[str, Any], db: asyncpg.Pool,
) -> None:
    sid = await running_session(api, ["b@example.com"])
    async with db.acquire() as conn:
        for n in range(MAX_INTERRUPTIONS):
            assert len(await claims.claim(conn, sid, 10, 30, f"job:{n}")) == 1
            await expire(db, sid)
        assert await claims.claim(conn, sid, 10, 30, "job:last") == []
        assert await claims.retire_interrupted(conn) == [sid]
    rows = await api.deliveries(str(sid))
    row = rows["b@example.com"]
    assert row["status"] == "failed" and row["attempts"] == MAX_INTERRUPTIONS
    assert row["error"] == claims.GAVE_UP_ERROR
    status, attempts = await api.get(f"/v1/sessions/{sid}/deliveries/b@example.com/attempts")
    assert [a["outcome"] for a in attempts["items"]] == ["interrupted"] * MAX_INTERRUPTIONS


def _rows_read(plan: dict[str, Any], table: str) -> int:
    """Rows the plan's scans of `table` looked at (kept or filtered out), over every node
    and loop."""
    own = 0
    if plan.get("Relation Name") == table:
        looked = (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)
                  + plan.get("Rows Removed by Index Recheck", 0))
        own = looked * plan.get("Actual Loops", 1)
    return own + sum(_rows_read(child, table) for child in plan.get("Plans", []))


async def test_a_claim_reads_only_the_deliveries_it_takes(
    api: Api, email_transport: dict[str, Any], db: asyncpg.Pool,
) -> None:
    """Each claim of a big session costs what it takes, not the session's size nor the
    number of its messages waiting for a receipt: lapsed claims and due deliveries are
    read in order from indexes and the scans stop at the limit (reading and sorting every
    due delivery per claim made a session's sending quadratic). Holds whether or not the
    table was analyzed since the session was stored. Claims come back in claim order:
    lapsed ones first, then by due time."""
    audience = [f"r{i}@example.com" for i in range(3000)]
    sid = await running_session(api, audience)
    async with db.acquire() as conn:
        first = await claims.claim(conn, sid, 10, 30, "job:first")
        await expire(db, sid)  # an interrupted claim is taken again, before anything else
        # 1,000 sent messages waiting for their receipts (leases far from over) ...
        await conn.execute(
            "UPDATE deliveries SET status = 'in_progress', claimed_by = 'receipt',"
            " lease_until = now() + interval '1 hour', next_attempt_at = NULL"
            " WHERE id IN (SELECT id FROM deliveries WHERE session_id = $1"
            "  AND status = 'pending' ORDER BY id DESC LIMIT 1000)", sid)
        # ... and the five last pending ones due before all the others
        early = [r["id"] for r in await conn.fetch(
            "UPDATE deliveries SET next_attempt_at = now() - interval '1 hour'"
            " WHERE id IN (SELECT id FROM deliveries WHERE session_id = $1"
            "  AND status = 'pending' ORDER BY id DESC LIMIT 5) RETURNING id", sid)]
        for analyzed in (False, True):
            if analyzed:
                await conn.execute("ANALYZE deliveries")
            probe = conn.transaction()  # the probe's claim is not kept
            await probe.start()
            try:
                plan = await conn.fetchval(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + claims.CLAIM_SQL, sid, 20, 30,
                    claims.INTERRUPTED_ERROR, "job:probe")
            finally:
                await probe.rollback()
            read = _rows_read(plan[0]["Plan"], "deliveries")
            assert read <= 4 * 20, (analyzed, read)  # the 20 claimed: found, locked, updated
        taken = await claims.claim(conn, sid, 250, 30, "job:second")
    ids = [c.recipient.delivery_id for c in taken]
    assert len(set(ids)) == 250
    assert ids[:10] == sorted(c.recipient.delivery_id for c in first)  # lapsed, lease order
    assert ids[10:15] == sorted(early)  # then the earliest due
    assert ids[15:] == sorted(ids[15:])  # then in due order (one time: by id)


async def test_a_give_back_tried_again_never_undoes_a_newer_claim(
    api: Api, email_transport: dict[str, Any], db: asyncpg.Pool,
) -> None:
    """Giving back takes the attempt number back, so the owner's next claim has the same
    number. A give-back tried again after its answer was lost must not give back (and
    delete the attempt of) that newer claim, whose call or message may be under way."""
    sid = await running_session(api, ["again@example.com"])
    async with db.acquire() as conn:
        [old] = await claims.claim(conn, sid, 1, 30, "job:same")
        assert await claims.give_back(conn, sid, [old], "job:same") == 1
        [new] = await claims.claim(conn, sid, 1, 30, "job:same")
        assert new.recipient.attempt == old.recipient.attempt  # the number came back
        assert await claims.give_back(conn, sid, [old], "job:same") == 0  # the retry
        row = await conn.fetchrow("SELECT * FROM deliveries WHERE session_id = $1", sid)
        assert (row["status"], row["claimed_by"]) == ("in_progress", "job:same")
        assert await conn.fetchval("SELECT count(*) FROM attempts WHERE id = $1",
                                   uuid.UUID(new.recipient.attempt_id)) == 1
        assert await claims.give_back(conn, sid, [new], "job:same") == 1
