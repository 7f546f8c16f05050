"""Group commit for finished calls: the outcomes of calls that end together are written
in one round (one `deliveries.record` and one completion check per session), not one
transaction, completion check and webhook kick per call. At a hundred calls a second the
per-call way queued on the session's completion lock and fell seconds behind.

A batch waits a moment for company (`hub.batching`). While the database is away a batch is
tried again with a growing delay, up to `tries` times; each session's part is written
once (recording is idempotent anyway: a delivery only moves while its claim is held).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import asyncpg

from hub.batching import GroupCommit
from hub.observe import metrics
from hub.store import deliveries, sessions
from hub.store.db import patiently
from hub.store.deliveries import Outcome

log = logging.getLogger(__name__)
# A batch waits this long for company: a call lasts seconds, and each batch costs about
# ten round trips (its transaction, the completion check), so at 100-200 calls a second
# a longer wait than the API's 20 ms for receipts halves the recording's statements.
RECORD_WAIT_S = 0.1


class CallRecorder:
    def __init__(self, pool: asyncpg.Pool, owner: str, report_base: str,
                 kick: Callable[[], object], tries: int) -> None:
        self.pool = pool
        self.owner = owner
        self.report_base = report_base
        self.kick = kick
        self.tries = tries
        self.commit: GroupCommit[tuple[uuid.UUID, Outcome], bool] = GroupCommit(
            self._write, wait_s=RECORD_WAIT_S)

    async def record(self, session_id: uuid.UUID, outcome: Outcome) -> bool:
        """Write one call's outcome with the others ending now: True once written, False
        when the database stayed away for every try (the reconciler closes it then)."""
        return await self.commit.submit((session_id, outcome))

    async def drain(self) -> None:
        """Wait until the calls submitted so far are written (a controller stopping)."""
        await self.commit.drain()

    async def _write(self, batch: list[tuple[uuid.UUID, Outcome]]) -> list[bool]:
        by_session: dict[uuid.UUID, list[Outcome]] = {}
        for session_id, outcome in batch:
            by_session.setdefault(session_id, []).append(outcome)
        written = await self._write_sessions(by_session)
        if written:
            try:  # webhooks are kicked again by the reconciler
                await asyncio.to_thread(self.kick)
            except Exception as exc:  # noqa: BLE001 (a kick is best effort)
                log.debug("voice: webhook kick failed: %s", exc)
        return [written] * len(batch)

    async def _write_sessions(self, by_session: dict[uuid.UUID, list[Outcome]]) -> bool:
        left = dict(by_session)

        async def write_left() -> None:  # a session written is not written again
            async with self.pool.acquire() as conn:
                for session_id in list(left):
                    outcomes = left[session_id]
                    done = await deliveries.record(conn, session_id, outcomes, owner=self.owner,
                                                   report_base=self.report_base)
                    await sessions.finish_if_done(conn, session_id, report_base=self.report_base)
                    del left[session_id]
                    metrics.recorded("voice", [o.result.outcome for o in outcomes
                                               if o.result.attempted], done.moved)

        return await patiently(write_left, self.tries, lambda: (
            f"voice: recording {sum(len(o) for o in left.values())} calls"))
