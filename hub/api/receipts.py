"""Group commit for provider callbacks: receipts that arrive together are applied in one
transaction; each callback is answered only after its batch has committed. A batch that
applied any receipt asks the webhook senders for a drain once (not once per callback)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import asyncpg

from hub.observe import metrics
from hub.store import receipts
from hub.transports.base import Result

log = logging.getLogger(__name__)
BATCH_MAX = 200
BATCH_WAIT_S = 0.02


class ReceiptBatcher:
    def __init__(self, pool: asyncpg.Pool, report_base: str,
                 kick: Callable[[], object] | None = None) -> None:
        self.pool = pool
        self.report_base = report_base
        self.kick = kick
        self.pending: list[tuple[uuid.UUID, str, Result, asyncio.Future[str]]] = []
        self.flushing: asyncio.Task[None] | None = None

    async def submit(self, transport_id: uuid.UUID, provider_ref: str, result: Result) -> str:
        """Apply one receipt of this transport's message → 'applied' | 'ignored' | 'stored'."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.pending.append((transport_id, provider_ref, result, future))
        if self.flushing is None or self.flushing.done():
            self.flushing = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self.pending:
            if len(self.pending) < BATCH_MAX:
                await asyncio.sleep(BATCH_WAIT_S)
            batch, self.pending = self.pending[:BATCH_MAX], self.pending[BATCH_MAX:]
            try:
                async with self.pool.acquire() as conn:
                    done = await receipts.apply_many(
                        conn, [(tid, ref, result) for tid, ref, result, _ in batch],
                        self.report_base)
            except (OSError, asyncpg.PostgresError) as exc:
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for tid, ref, _, future in batch:
                if not future.done():
                    future.set_result(result := done.get((tid, ref), "ignored"))
                metrics.receipt(result)
            if self.kick is not None and "applied" in done.values():
                await asyncio.to_thread(self.kick)
