"""Group commit for provider callbacks: receipts that arrive together are applied in one
transaction; each callback is answered only after its batch has committed. A batch that
applied any receipt asks the webhook senders for a drain once (not once per callback)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import asyncpg

from hub.batching import GroupCommit
from hub.observe import metrics
from hub.store import receipts
from hub.transports.base import Result

log = logging.getLogger(__name__)


Receipt = tuple[uuid.UUID, str, Result]  # (transport id, provider message id, result)


class ReceiptBatcher:
    def __init__(self, pool: asyncpg.Pool, report_base: str,
                 kick: Callable[[], object] | None = None) -> None:
        self.pool = pool
        self.report_base = report_base
        self.kick = kick
        self.commit: GroupCommit[Receipt, str] = GroupCommit(self._apply)

    async def submit(self, transport_id: uuid.UUID, provider_ref: str, result: Result) -> str:
        """Apply one receipt of this transport's message → 'applied' | 'ignored' | 'stored'."""
        return await self.commit.submit((transport_id, provider_ref, result))

    async def _apply(self, batch: list[Receipt]) -> list[str]:
        async with self.pool.acquire() as conn:
            done = await receipts.apply_many(conn, batch, self.report_base)
        answers = [done.get((tid, ref), "ignored") for tid, ref, _ in batch]
        for answer in answers:
            metrics.receipt(answer)
        if self.kick is not None and "applied" in answers:
            await asyncio.to_thread(self.kick)
        return answers
