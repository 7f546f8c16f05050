"""Small submissions without an Idempotency-Key, stored together.

Those that arrive while a batch is being written go together in the next one: one
statement (`sessions.create_many`), one write to PostgreSQL's socket and one commit for
all of them. Under load most of a submission's cost was that write and the wake-up of the
backend behind it (a third of the API's CPU at 1,000 req/s); a lone request goes at once,
waiting for nobody. A statement one session of the batch makes fail (say, its transport
deleted since it was looked up) is tried again one session at a time, so the others are
stored and that one gets its own error.
"""

from __future__ import annotations

import asyncpg
from aiohttp import web

from hub.batching import GroupCommit
from hub.store import sessions

BATCH_MAX = 100  # sessions a statement stores (each with at most COPY_ABOVE deliveries)


class Batches:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.commit: GroupCommit[sessions.NewSession, BaseException | None] = GroupCommit(
            self._write, batch_max=BATCH_MAX, wait_s=0.0)

    async def store(self, session: sessions.NewSession) -> None:
        """Once `session` and its deliveries are committed (raises what stopped it)."""
        failed = await self.commit.submit(session)
        if failed is not None:
            raise failed

    async def _write(self, batch: list[sessions.NewSession]) -> list[BaseException | None]:
        async with self.pool.acquire() as conn:
            try:
                await sessions.create_many(conn, batch)
                return [None] * len(batch)
            except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError):
                if len(batch) == 1:
                    raise
            outcomes: list[BaseException | None] = []
            for one in batch:  # whose was it: each alone, the others stored
                try:
                    await sessions.create(conn, one)
                    outcomes.append(None)
                except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
                    outcomes.append(exc)
            return outcomes


BATCHES = web.AppKey("session_batches", Batches)
