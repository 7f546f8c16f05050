"""Small submissions stored together.

Those that arrive while a batch is being written go together in the next one: one
statement (`sessions.create_many`), one write to PostgreSQL's socket and one commit for
all of them, each with its Idempotency-Key's answer when it has one. Under load most of a
submission's cost was that write and the wake-up of the backend behind it (a third of
the API's CPU at 1,000 req/s); a lone request goes at once, waiting for nobody. A second
request with a key already in the batch goes after it (and finds the first's answer). A
statement one session of the batch makes fail (say, its transport deleted since it was
looked up) is tried again one session at a time, so the others are stored and that one
gets its own error.
"""

from __future__ import annotations

from typing import cast

import asyncpg
from aiohttp import web

from hub.batching import GroupCommit
from hub.store import idempotency, sessions

BATCH_MAX = 100  # sessions a statement stores
# Sessions with more deliveries go alone (one statement each, concurrently, on the
# requests' own connections): a batch is at most BATCH_MAX x MAX_DELIVERIES rows, so a
# few large submissions never hold up every small one behind a 100,000-row statement.
MAX_DELIVERIES = 50
ITEM_FAULTS = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)

Item = tuple[sessions.NewSession, sessions.Keyed | None]
Done = idempotency.Outcome | BaseException


class Batches:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.commit: GroupCommit[Item, Done] = GroupCommit(
            self._write, batch_max=BATCH_MAX, wait_s=0.0)

    async def store(self, session: sessions.NewSession, keyed: sessions.Keyed | None = None
                    ) -> idempotency.Outcome:
        """Once `session` and its deliveries are committed, or its key answered before
        (raises what stopped it)."""
        done = await self.commit.submit((session, keyed))
        if isinstance(done, BaseException):  # maybe shared by the batch's items
            raise done.with_traceback(None)
        return done

    async def _write(self, batch: list[Item]) -> list[Done]:
        """Each item's outcome, or the exception that stopped it. Never raised for the
        whole batch once something may have been committed: an error is only its items'."""
        first, after = _one_per_key(batch)
        outcomes: list[Done | None] = [None] * len(batch)
        async with self.pool.acquire() as conn:
            try:
                for at, done in zip(first, await sessions.create_many(
                        conn, [batch[i] for i in first]), strict=True):
                    outcomes[at] = done
            except ITEM_FAULTS as exc:  # nothing was stored
                if len(first) == 1:
                    outcomes[first[0]] = exc
                else:
                    after = sorted(first + after)  # whose was it: each alone
            except Exception as exc:  # the statement's items, and only they
                for at in first:
                    outcomes[at] = exc
            for at in after:
                try:
                    outcomes[at] = await sessions.create(conn, *batch[at])
                except Exception as exc:
                    outcomes[at] = exc
        assert all(done is not None for done in outcomes)
        return cast(list[Done], outcomes)


def takes(session: sessions.NewSession) -> bool:
    """Whether `session` is stored in a batch (else alone, on its request's connection)."""
    return len(session.addresses) <= MAX_DELIVERIES


def _one_per_key(batch: list[Item]) -> tuple[list[int], list[int]]:
    """The positions that go in the batch's statement, and those that go after it alone
    (a key already in the statement)."""
    first: list[int] = []
    after: list[int] = []
    seen: set[tuple[object, str]] = set()
    for at, (_, keyed) in enumerate(batch):
        ident = None if keyed is None else (keyed[0].app_id, keyed[0].key)
        if ident is not None and ident in seen:
            after.append(at)
        else:
            first.append(at)
            if ident is not None:
                seen.add(ident)
    return first, after


BATCHES = web.AppKey("session_batches", Batches)
