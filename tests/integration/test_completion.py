"""Closing a session on the real database: the completion check and a cancel, run at the
same moment, never deadlock, and the session is closed once, with one `session.completed`."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from hub.store import sessions
from tests.helpers import Api, waiting_for_a_lock


async def test_a_completion_check_and_a_cancel_do_not_deadlock(
    api: Api, email_transport: dict[str, Any], db: asyncpg.Pool,
) -> None:
    """A cancel holds the session row (`FOR UPDATE`) and ends with its own completion
    check. A job's check that came meanwhile took an advisory lock first and then waited
    for the row, while the cancel waited for that lock: PostgreSQL broke the deadlock by
    failing one of them. The check now waits for the row before it takes anything."""
    created = await api.submit({
        "transport": {"type": "email", "subject": "S", "message": "M"},
        "audience": ["a@example.com"],
        "options": {"trigger": "manual", "webhookUrl": "http://127.0.0.1:9/hook"}})
    sid = uuid.UUID(created["sessionId"])
    # every delivery final, the session not yet closed: a job's follow-up is about to check
    await db.execute("UPDATE sessions SET status = 'running' WHERE id = $1", sid)
    await db.execute("UPDATE deliveries SET status = 'delivered' WHERE session_id = $1", sid)

    async with db.acquire() as cancel, db.acquire() as job:
        async with cancel.transaction():  # the cancel's steps (sessions.transition, _cancel)
            await cancel.execute("SELECT FROM sessions WHERE id = $1 FOR UPDATE", sid)
            check = asyncio.create_task(sessions.finish_if_done(job, sid, report_base=""))
            await waiting_for_a_lock(db, job, "the completion check")
            await cancel.execute("UPDATE sessions SET status = 'cancelled' WHERE id = $1", sid)
            closed_by_cancel = await sessions.finish_if_done(cancel, sid, report_base="")
        closed_by_job = await check

    assert (closed_by_cancel, closed_by_job) == (True, False)
    row = await db.fetchrow("SELECT status, ended_at FROM sessions WHERE id = $1", sid)
    assert row["status"] == "cancelled" and row["ended_at"] is not None
    assert await db.fetchval("SELECT count(*) FROM webhook_events WHERE session_id = $1"
                             " AND type = 'session.completed'", sid) == 1
