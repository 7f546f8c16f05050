"""Small submissions without a key stored together (`hub.api.storing`,
`sessions.create_many`) against the real PostgreSQL: what a batch stores is what one at a
time stores, and one session's fault fails only that session."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg

from hub.api.storing import MAX_DELIVERIES, Batches
from hub.config import Settings
from hub.instruction import parse_instruction
from hub.store import sessions
from hub.store.idempotency import Key
from tests.helpers import Api

SETTINGS = Settings(allow_private_urls=True)
SOON = (datetime.now(UTC) + timedelta(days=1)).astimezone(timezone(timedelta(hours=-5)))
DOCS: list[dict[str, Any]] = [
    {"transport": {"type": "email", "subject": "S", "message": "M",
                   "extras": {"cc": ["c@example.com"], "bcc": ["b@example.com", "A@example.com"]}},
     "audience": ["a@example.com", "z@example.com", "a@example.com"]},
    {"transport": {"type": "email", "subject": "S2", "message": "M2"},
     "audience": ["s@example.com"],
     "options": {"trigger": "scheduled", "scheduledTimestamp": SOON.isoformat(), "retries": 3,
                 "retryIntervalMinutes": "1.5,60,240"}},
    {"transport": {"type": "email", "subject": "S3", "message": "M3"}, "xref": "x-3",
     "audience": ["m@example.com", "n@example.com"],
     "options": {"trigger": "manual", "webhookUrl": "http://127.0.0.1:9/hook"}},
]


def made(transport: dict[str, Any], app_id: uuid.UUID) -> list[sessions.NewSession]:
    return [sessions.new(app_id, transport, parse_instruction(doc, SETTINGS)) for doc in DOCS]


def renamed(session: sessions.NewSession) -> sessions.NewSession:
    """The same session under another id (so both ways can store it)."""
    return replace(session, row={**session.row, "id": uuid.uuid4()})


async def stored(db: asyncpg.Pool, session_id: uuid.UUID) -> tuple[dict[str, Any], list[Any]]:
    row = dict(await db.fetchrow("SELECT * FROM sessions WHERE id = $1", session_id))
    del row["id"]
    deliveries = await db.fetch(
        "SELECT address, status, attempts, next_attempt_at, role FROM deliveries"
        " WHERE session_id = $1 ORDER BY address", session_id)
    return row, [tuple(d) for d in deliveries]


@contextlib.asynccontextmanager
async def held_up(db: asyncpg.Pool, xref: str) -> AsyncIterator[None]:
    """Within the block, the statement storing the session with `xref` takes 0.5 s longer
    (injected in PostgreSQL)."""
    await db.execute(f"""
        CREATE FUNCTION hold_first() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$;
        CREATE TRIGGER hold_first BEFORE INSERT ON sessions
        FOR EACH ROW WHEN (NEW.xref = '{xref}') EXECUTE FUNCTION hold_first();
    """)
    try:
        yield
    finally:
        await db.execute("DROP TRIGGER hold_first ON sessions; DROP FUNCTION hold_first()")


async def app_of(db: asyncpg.Pool, transport: dict[str, Any]) -> uuid.UUID:
    found: uuid.UUID = await db.fetchval("SELECT app_id FROM transports WHERE id = $1",
                                         uuid.UUID(transport["id"]))
    return found


async def test_a_batch_stores_what_one_at_a_time_stores(
    api: Api, email_transport: dict[str, Any], db: asyncpg.Pool,
) -> None:
    alone = made(email_transport, await app_of(db, email_transport))
    together = [renamed(s) for s in alone]
    async with db.acquire() as conn:
        for one in alone:
            await sessions.create(conn, one)
        outcomes = await sessions.create_many(conn, [(s, None) for s in together])
    assert all(done.stored for done in outcomes)
    for one, other in zip(alone, together, strict=True):
        first, second = await stored(db, one.row["id"]), await stored(db, other.row["id"])
        assert first == second
        assert len(second[1]) == len(one.addresses)  # the audience and the copies
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 2 * (4 + 1 + 2)


async def test_one_session_s_fault_fails_only_that_session(
    api: Api, email_transport: dict[str, Any], db: asyncpg.Pool,
) -> None:
    good = made(email_transport, await app_of(db, email_transport))
    gone = replace(good[1], row={**renamed(good[1]).row, "transport_id": uuid.uuid4()})
    batches = Batches(db)
    outcomes = await asyncio.gather(*(batches.store(s) for s in (good[0], gone, good[2])),
                                    return_exceptions=True)
    assert outcomes[0].stored and outcomes[2].stored  # type: ignore[union-attr]
    assert isinstance(outcomes[1], asyncpg.ForeignKeyViolationError)
    ids = {r["id"] for r in await db.fetch("SELECT id FROM sessions")}
    assert ids == {good[0].row["id"], good[2].row["id"]}


async def test_submissions_at_once_are_each_stored_as_answered(
    api: Api, email_transport: dict[str, Any], db: asyncpg.Pool,
) -> None:
    """Through `hub api`: many at once (stored in batches), each answer is its session as
    stored, with its own audience."""
    docs = [{**DOCS[i % 3], "xref": f"at-once-{i}",
             "audience": [f"u{i}-{j}@example.com" for j in range(1 + i % 3)]}
            for i in range(60)]
    # the first one's statement is held up, so the others arrive while it is written
    async with held_up(db, "at-once-0"):
        first = asyncio.create_task(api.post("/v1/sessions", docs[0]))
        await asyncio.sleep(0.1)
        answers = [await first,
                   *await asyncio.gather(*(api.post("/v1/sessions", d) for d in docs[1:]))]
    assert {status for status, _ in answers} == {201}
    # stored together: far fewer transactions than sessions
    assert await db.fetchval("SELECT count(DISTINCT xmin::text) FROM sessions") < 30
    for doc, (_, created) in zip(docs, answers, strict=True):
        status, got = await api.get(f"/v1/sessions/{created['sessionId']}")
        got.pop("counts")
        if "scheduledTimestamp" not in created:  # the 201 leaves out an unscheduled one's
            assert got.pop("scheduledTimestamp") is None
        assert status == 200 and got == created and got["xref"] == doc["xref"]
        addresses = {r["address"] for r in await db.fetch(
            "SELECT address FROM deliveries WHERE session_id = $1 AND role = 'to'",
            uuid.UUID(created["sessionId"]))}
        assert addresses == set(doc["audience"])


async def test_keyed_sessions_in_one_batch_each_get_their_key_s_answer(
    api: Api, email_transport: dict[str, Any], db: asyncpg.Pool,
) -> None:
    """New keys are stored with their sessions; a key answered before, or twice in the
    batch, creates nothing and finds the first answer; an expired one is replaced."""
    app_id = await app_of(db, email_transport)
    first, again, answered, plain, expired = (
        renamed(made(email_transport, app_id)[i % 3]) for i in range(5))

    def key(name: str) -> Key:
        return Key(app_id, name, b"hash-" + name.encode(), 24)

    for name, age_h in (("answered", 1), ("expired", 25)):
        await db.execute(
            "INSERT INTO idempotency_keys (app_id, key, request_hash, status_code, body,"
            " created_at) VALUES ($1, $2, $3, 201, $4, now() - make_interval(hours => $5))",
            app_id, name, b"hash-" + name.encode(), {"before": name}, age_h)
    batches = Batches(db)
    outcomes = await asyncio.gather(
        batches.store(first, (key("new"), {"sessionId": "first"})),
        batches.store(again, (key("new"), {"sessionId": "again"})),
        batches.store(answered, (key("answered"), {"sessionId": "answered"})),
        batches.store(plain),
        batches.store(expired, (key("expired"), {"sessionId": "expired"})))
    assert [done.stored for done in outcomes] == [True, False, False, True, True]
    assert outcomes[1].previous is not None and outcomes[1].previous.body == {
        "sessionId": "first"}
    assert outcomes[2].previous is not None and outcomes[2].previous.body == {
        "before": "answered"}
    ids = {r["id"] for r in await db.fetch("SELECT id FROM sessions")}
    assert ids == {first.row["id"], plain.row["id"], expired.row["id"]}
    assert await db.fetchval("SELECT count(DISTINCT xmin::text) FROM sessions") == 1
    bodies = {r["key"]: r["body"] for r in await db.fetch(
        "SELECT key, body FROM idempotency_keys")}
    assert bodies == {"new": {"sessionId": "first"}, "answered": {"before": "answered"},
                      "expired": {"sessionId": "expired"}}
    delivered = await db.fetchval("SELECT count(DISTINCT session_id) FROM deliveries")
    assert delivered == 3


async def test_an_error_after_sessions_were_stored_is_only_its_own_session_s(
    api: Api, email_transport: dict[str, Any], db: asyncpg.Pool,
) -> None:
    """The batch's statement fails (one session's transport is gone), so each is stored
    alone; another's own statement then fails otherwise (a trigger's error, injected in
    PostgreSQL only for a statement of one): the one stored before it is still answered
    as stored, not with that error."""
    good = made(email_transport, await app_of(db, email_transport))
    gone = replace(good[1], row={**renamed(good[1]).row, "transport_id": uuid.uuid4()})
    boom = replace(good[0], row={**renamed(good[0]).row, "xref": "boom"})
    await db.execute("""
        CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
          IF current_query() NOT LIKE '%$28%' THEN RAISE EXCEPTION 'injected'; END IF;
          RETURN NEW; END $$;
        CREATE TRIGGER boom BEFORE INSERT ON sessions
        FOR EACH ROW WHEN (NEW.xref = 'boom') EXECUTE FUNCTION boom();
    """)
    try:
        batches = Batches(db)
        outcomes = await asyncio.gather(*(batches.store(s) for s in (good[0], gone, boom)),
                                        return_exceptions=True)
    finally:
        await db.execute("DROP TRIGGER boom ON sessions; DROP FUNCTION boom()")
    assert outcomes[0].stored  # type: ignore[union-attr]
    assert isinstance(outcomes[1], asyncpg.ForeignKeyViolationError)
    assert isinstance(outcomes[2], asyncpg.RaiseError)
    assert {r["id"] for r in await db.fetch("SELECT id FROM sessions")} == {good[0].row["id"]}


async def test_a_session_of_more_than_max_deliveries_is_stored_alone(
    api: Api, email_transport: dict[str, Any], db: asyncpg.Pool,
) -> None:
    small = {**DOCS[2], "xref": "small"}
    large = {**DOCS[2], "xref": "large",
             "audience": [f"l{i}@example.com" for i in range(MAX_DELIVERIES + 1)]}
    async with held_up(db, "first"):
        first = asyncio.create_task(api.post("/v1/sessions", {**small, "xref": "first"}))
        await asyncio.sleep(0.1)  # the first batch is being written: the rest queue
        answers = await asyncio.gather(*(api.post("/v1/sessions", d)
                                         for d in (small, large, small)))
        assert (await first)[0] == 201
    assert [status for status, _ in answers] == [201] * 3
    xmins = {r["xref"]: r["x"] for r in await db.fetch(
        "SELECT xref, xmin::text AS x FROM sessions WHERE xref IN ('small', 'large')")}
    smalls = await db.fetch("SELECT DISTINCT xmin::text FROM sessions WHERE xref = 'small'")
    assert len(smalls) == 1 and xmins["large"] != smalls[0][0]  # the small two together
