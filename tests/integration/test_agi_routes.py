"""The FastAGI routes on a real database: `lookup` sets the channel variables an
operator's dialplan branches on; the callback store picks the delivery a caller calls
back about and appends to its `detail.callbacks` without touching its status."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from hub.config import Settings
from hub.results import Result
from hub.retry import Decision
from hub.store import callbacks as store
from hub.store import claims, deliveries, suppressions
from hub.store.apps import create_app
from hub.store.db import create_pool
from hub.store.deliveries import Outcome
from hub.voice.agi import AgiServer
from hub.voice.audio import AudioStore
from hub.voice.callbacks import Callbacks
from tests.conftest import DB_URL
from tests.helpers import Api

NUMBER = "+9779812345600"


async def seed(db: asyncpg.Pool, app_id: uuid.UUID, *, trunk: str = "trunk",
               status: str = "delivered", outcome: str | None = "answered",
               minutes_ago: int = 10) -> tuple[uuid.UUID, int]:
    transport = uuid.uuid4()
    await db.execute(
        "INSERT INTO transports (id, app_id, name, type, provider, config, secrets)"
        " VALUES ($1, $2, $3, 'voice', 'asterisk', $4, '{}')",
        transport, app_id, f"t-{transport.hex[:6]}", {"trunk": trunk})
    session = uuid.uuid4()
    await db.execute(
        "INSERT INTO sessions (id, app_id, transport_id, transport_type, status, trigger,"
        " instruction, retries, retry_intervals_s, audience_count, duplicates_removed, media)"
        " VALUES ($1, $2, $3, 'voice', 'completed', 'immediate', '{}', 0, '{}', 1, 0, $4)",
        session, app_id, transport, {"name": "t-abc", "durationS": 3.0})
    delivery: int = await db.fetchval(
        "INSERT INTO deliveries (session_id, address, status, attempts, outcome, detail,"
        " last_attempt_at) VALUES ($1, $2, $3, 1, $4, $5,"
        " now() - make_interval(mins => $6)) RETURNING id",
        session, NUMBER, status, outcome, {"played": True}, minutes_ago)
    await db.execute("INSERT INTO attempts (id, delivery_id, attempt, outcome)"
                     " VALUES ($1, $2, 1, $3)", uuid.uuid4(), delivery, outcome)
    return session, delivery


@pytest.fixture
async def lookup_port(db: asyncpg.Pool, settings: Settings) -> AsyncIterator[int]:
    callbacks = Callbacks(settings, db, AudioStore(settings))
    server = AgiServer(callbacks.routes(), max_calls=10)
    await server.start("127.0.0.1", 0)
    yield server.port
    await server.close()


async def lookup(port: int, callerid: str, channel: str = "PJSIP/trunk-00000001",
                 *args: str) -> dict[str, str]:
    """Asterisk's side of `AGI(agi://.../lookup)`: the variables the hub set."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = ["agi_network_script: lookup", f"agi_channel: {channel}",
            f"agi_callerid: {callerid}", *(f"agi_arg_{i}: {a}" for i, a in enumerate(args, 1))]
    writer.write(("\n".join(head) + "\n\n").encode())
    found = {}
    async with asyncio.timeout(5):
        while line := (await reader.readline()).decode().strip():
            _, _, rest = line.partition("SET VARIABLE ")
            name, _, value = rest.partition(" ")
            found[name] = value.strip('"')
            writer.write(b"200 result=1\n")
    writer.close()
    return found


async def test_lookup_sets_the_callers_last_session_and_suppression(
    db: asyncpg.Pool, lookup_port: int,
) -> None:
    app = await create_app(db, "acme")
    session, _ = await seed(db, app.app_id)
    assert await lookup(lookup_port, NUMBER.removeprefix("+")) == {
        "HUB_LAST_SESSION": str(session), "HUB_LAST_STATUS": "delivered",
        "HUB_SUPPRESSED": "0", "HUB_APP": str(app.app_id)}
    async with db.acquire() as conn:
        await suppressions.add_one(conn, app.app_id, NUMBER, "voice", "test")
    assert (await lookup(lookup_port, NUMBER))["HUB_SUPPRESSED"] == "1"
    # Another trunk's callers know nothing of it; an explicit number and trunk work anywhere.
    assert (await lookup(lookup_port, NUMBER, "PJSIP/other-00000002"))["HUB_LAST_SESSION"] == ""
    assert (await lookup(lookup_port, "anonymous", "Local/s@x-00000001;2", NUMBER, "trunk")
            )["HUB_LAST_SESSION"] == str(session)
    assert await lookup(lookup_port, "+9770000000001") == {
        "HUB_LAST_SESSION": "", "HUB_LAST_STATUS": "", "HUB_SUPPRESSED": "0", "HUB_APP": ""}


async def test_a_call_that_reached_the_callee_is_preferred_and_the_record_appends(
    db: asyncpg.Pool,
) -> None:
    app = await create_app(db, "acme")
    reached, delivery = await seed(db, app.app_id, minutes_ago=30)
    await seed(db, app.app_id, status="failed", outcome="busy", minutes_ago=1)
    async with db.acquire() as conn:
        found = await store.latest(conn, [NUMBER], "trunk", reached_first=True)
        assert found is not None and found.session_id == reached
        newest = await store.latest(conn, [NUMBER], "trunk", reached_first=False)
        assert newest is not None and newest.status == "failed"
        for listened, digits in ((2.5, ""), (1.0, "9")):
            callback_id = await store.start(conn, caller=NUMBER, trunk="trunk",
                                            channel="PJSIP/trunk-1", found=found)
            await store.finish(conn, callback_id, listened_s=listened, digits=digits,
                               suppressed=digits == "9")
    row: Any = await db.fetchrow("SELECT status, outcome, detail FROM deliveries WHERE id = $1",
                                 delivery)
    assert (row["status"], row["outcome"], row["detail"]["played"]) == ("delivered", "answered",
                                                                         True)
    assert [(c["listenedS"], c["digits"]) for c in row["detail"]["callbacks"]] == [
        (2.5, ""), (1.0, "9")]


async def test_a_later_attempt_keeps_the_callbacks_of_its_delivery(
    api: Api, email_transport: dict[str, Any], db: asyncpg.Pool,
) -> None:
    created = await api.submit({"transport": {"type": "email", "subject": "S", "message": "M"},
                                "audience": ["a@example.com"], "options": {"trigger": "manual"}})
    sid = uuid.UUID(created["sessionId"])
    assert (await api.post(f"/v1/sessions/{sid}/trigger"))[0] == 202
    async with db.acquire() as conn:
        [claimed] = await claims.claim(conn, sid, 10, 30, "job:x")
        found = store.Latest(claimed.recipient.delivery_id, sid, api.app.app_id,
                             "a@example.com", "in_progress", None, 0.0, False)
        callback_id = await store.start(conn, caller=NUMBER, trunk="trunk", channel=None,
                                        found=found)
        await store.finish(conn, callback_id, listened_s=1.5, digits="", suppressed=False)
        done = Outcome(claimed, Result("delivered", delivered=True, detail={"k": 1}),
                       Decision("delivered"), datetime.now(UTC))
        await deliveries.record(conn, sid, [done], owner="job:x", report_base="")
    row: Any = await db.fetchrow("SELECT status, detail FROM deliveries WHERE session_id = $1",
                                 sid)
    assert row["status"] == "delivered" and row["detail"]["k"] == 1
    assert [c["listenedS"] for c in row["detail"]["callbacks"]] == [1.5]


async def test_a_callback_while_the_database_is_away_still_hears_the_fallback(
    settings: Settings,
) -> None:
    pool = await create_pool(DB_URL, max_size=1)
    await pool.close()  # every query now fails as with a lost database
    fallback = settings.model_copy(update={"callback_fallback": "vm-goodbye"})
    server = AgiServer(Callbacks(fallback, pool, AudioStore(fallback)).routes(), max_calls=2)
    await server.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"agi_network_script: callback\nagi_channel: PJSIP/trunk-00000001\n"
                 b"agi_callerid: +9779812345600\n\n")
    commands = []
    async with asyncio.timeout(5):
        while line := (await reader.readline()).decode().strip():
            commands.append(line)
            writer.write(b"200 result=0 endpos=7000\n")
    writer.close()
    await server.close()
    assert commands == ["ANSWER", 'STREAM FILE vm-goodbye ""']
