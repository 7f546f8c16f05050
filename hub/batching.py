"""Group commit: items that arrive together are written in one round, and each caller
waits for its own item's answer (written after its batch has committed). The API's
submissions and provider callbacks, the voice controller's ended calls and its carrier
channels given back use it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
BATCH_MAX = 200
BATCH_WAIT_S = 0.02


class GroupCommit(Generic[T, R]):
    def __init__(self, write: Callable[[list[T]], Awaitable[Sequence[R]]], *,
                 batch_max: int = BATCH_MAX, wait_s: float = BATCH_WAIT_S) -> None:
        """`write` gets a batch and answers one result per item, in order; if it raises,
        every caller of that batch gets the exception."""
        self.write = write
        self.batch_max = batch_max
        self.wait_s = wait_s
        self.pending: list[tuple[T, asyncio.Future[R]]] = []
        self.flushing: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Write `item` with the others arriving now (waiting at most `wait_s` for
        company); its result once its batch is written."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        if self.flushing is None or self.flushing.done():
            self.flushing = asyncio.create_task(self._flush())
        return await future

    async def drain(self) -> None:
        """Wait until every item submitted so far has been written (or failed)."""
        while self.flushing is not None and not self.flushing.done():
            await asyncio.wait([self.flushing])

    async def _flush(self) -> None:
        while self.pending:
            if len(self.pending) < self.batch_max:
                await asyncio.sleep(self.wait_s)
            batch, self.pending = self.pending[:self.batch_max], self.pending[self.batch_max:]
            try:
                results = await self.write([item for item, _ in batch])
            except Exception as exc:  # each caller decides what a failed write means
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
