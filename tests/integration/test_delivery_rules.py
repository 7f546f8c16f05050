"""The rules that tie deliveries to their session, on the real database (migration 018
checks them per statement instead of per row): a delivery names a session that exists,
never moves to another, and goes when its session goes, with its attempts; a session
given deliveries by a transaction in progress cannot be deleted from under it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from hub.store import claims
from tests.helpers import Api
from tests.integration.test_claims import running_session

INSERT = ("INSERT INTO deliveries (session_id, address, status)"
          " SELECT $1, a, 'pending' FROM unnest($2::text[]) AS a")


async def test_a_delivery_names_a_session_that_exists(
    api: Api, email_transport: dict[str, Any], db: asyncpg.Pool,
) -> None:
    sid = await running_session(api, ["a@example.com"])
    before = await db.fetchval("SELECT count(*) FROM deliveries")
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="no session"):
        await db.execute(INSERT, uuid.uuid4(), ["b@example.com"])
    with pytest.raises(asyncpg.ForeignKeyViolationError):  # one bad row spoils the statement
        await db.execute("INSERT INTO deliveries (session_id, address, status)"
                         " VALUES ($1, 'c@example.com', 'pending'),"
                         " ($2, 'd@example.com', 'pending')", sid, uuid.uuid4())
    other = await running_session(api, ["e@example.com"])
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="another session"):
        await db.execute("UPDATE deliveries SET session_id = $2 WHERE session_id = $1",
                         sid, other)
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="id cannot change"):
        await db.execute("UPDATE sessions SET id = $2 WHERE id = $1", sid, uuid.uuid4())
    assert await db.fetchval("SELECT count(*) FROM deliveries") == before + 1
    await db.execute(INSERT, sid, ["f@example.com", "g@example.com"])
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE session_id = $1", sid) == 3


async def test_a_deleted_session_takes_its_deliveries_and_their_attempts(
    api: Api, email_transport: dict[str, Any], db: asyncpg.Pool,
) -> None:
    gone = await running_session(api, ["a@example.com", "b@example.com"])
    kept = await running_session(api, ["c@example.com"])
    async with db.acquire() as conn:
        assert len(await claims.claim(conn, gone, 10, 30, "job:test")) == 2
        assert len(await claims.claim(conn, kept, 10, 30, "job:test")) == 1
    async with db.acquire() as conn:
        with pytest.raises(asyncpg.SerializationError, match="READ COMMITTED only"):
            async with conn.transaction(isolation="repeatable_read"):
                await conn.execute("DELETE FROM sessions WHERE id = $1", gone)
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="truncate deliveries"):
            await conn.execute("TRUNCATE sessions, webhook_events, webhook_attempts, callbacks")
    await db.execute("DELETE FROM sessions WHERE id = $1", gone)
    rows = await db.fetch("SELECT d.session_id, count(a.id) AS attempts FROM deliveries d"
                          " LEFT JOIN attempts a ON a.delivery_id = d.id GROUP BY 1")
    assert [(r["session_id"], r["attempts"]) for r in rows] == [(kept, 1)]


async def test_a_session_being_given_deliveries_is_deleted_only_after_with_them(
    api: Api, email_transport: dict[str, Any], db: asyncpg.Pool,
) -> None:
    sid = await running_session(api, ["a@example.com"])
    async with db.acquire() as adding, db.acquire() as deleting:
        async with adding.transaction():
            await adding.execute(INSERT, sid, [f"u{i}@example.com" for i in range(500)])
            delete = asyncio.create_task(
                deleting.execute("DELETE FROM sessions WHERE id = $1", sid))
            await asyncio.sleep(0.3)
            assert not delete.done()  # waits for the adding transaction
        assert await delete == "DELETE 1"
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE session_id = $1", sid) == 0
    # ... and deliveries for a session deleted meanwhile are refused, not left behind.
    sid = await running_session(api, ["b@example.com"])
    async with db.acquire() as adding, db.acquire() as deleting:
        async with deleting.transaction():
            await deleting.execute("DELETE FROM sessions WHERE id = $1", sid)
            add = asyncio.create_task(adding.execute(INSERT, sid, ["c@example.com"]))
            await asyncio.sleep(0.3)
            assert not add.done()  # waits for the deleting transaction
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await add
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE session_id = $1", sid) == 0
