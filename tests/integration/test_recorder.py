"""The job's recorder on the real database: what follows a committed chunk (applying
receipts that came early) may fail without the chunk being written again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from hub.jobs.health import Health
from hub.jobs.recorder import Recorder
from hub.results import Result
from hub.store import claims, sessions
from hub.store.claims import Claimed
from hub.store.deliveries import Outcome, Recorded
from tests.helpers import Api

OWNER = "job:test"


async def test_a_failing_follow_up_does_not_write_its_chunk_again(
    api: Api, email_transport: dict[str, Any], db: asyncpg.Pool,
) -> None:
    """The follow-up fails once the chunk has committed: the chunk is not written again
    (that would overwrite what came since, such as a receipt's outcome), the job goes on,
    and its senders are not held back."""
    created = await api.submit({
        "transport": {"type": "email", "subject": "S", "message": "M"},
        "audience": ["a@example.com", "b@example.com"], "options": {"trigger": "manual"}})
    sid = uuid.UUID(created["sessionId"])
    await db.execute("UPDATE sessions SET status = 'running' WHERE id = $1", sid)
    await db.execute("UPDATE deliveries SET next_attempt_at = now() WHERE session_id = $1", sid)
    async with db.acquire() as conn:
        claimed = await claims.claim(conn, sid, 2, 60, OWNER)
    session = await sessions.get(db, None, sid)
    follow_ups: list[int] = []
    released: list[Claimed] = []

    async def failing_follow_up(conn: asyncpg.Connection, chunk: Sequence[Outcome],
                                recorded: Recorded) -> None:
        follow_ups.append(len(chunk))
        raise asyncpg.QueryCanceledError("canceling statement due to statement timeout")

    health = Health()
    recorder = Recorder(db, session, OWNER, "", health, released.extend, failing_follow_up)
    for item in claimed:
        recorder.add(item, Result("delivered", delivered=True))
    recorder.close()
    await asyncio.wait_for(recorder.run(), 10)

    assert follow_ups == [2]
    assert sorted(c.recipient.address for c in released) == ["a@example.com", "b@example.com"]
    assert health.ok.is_set() and recorder.session_closed
    rows = await db.fetch("SELECT d.status, d.attempts, a.outcome FROM deliveries d"
                          " JOIN attempts a ON a.delivery_id = d.id WHERE d.session_id = $1", sid)
    assert [tuple(r) for r in rows] == [("delivered", 1, "delivered")] * 2
    assert await db.fetchval("SELECT status FROM sessions WHERE id = $1", sid) == "completed"
