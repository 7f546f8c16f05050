"""Provider limits per transport, shared by every worker through Redis: messages per
second (a send waits for its slot) and a daily cap (work over it is deferred to the next
UTC day, never dropped). The day's counter lives in Redis; if Redis loses it, counting
starts again from zero for that day."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from hub.constants import REDIS_PREFIX


class Limiter:
    def __init__(self, redis: Redis, transport_id: str, mps: float | None,
                 daily_cap: int | None) -> None:
        self.redis = redis
        self.transport_id = transport_id
        self.mps = mps
        self.daily_cap = daily_cap

    async def acquire(self) -> float | None:
        """None when the message may go now; else seconds until the daily cap resets."""
        if self.daily_cap is not None:
            now = datetime.now(UTC)
            key = f"{REDIS_PREFIX}cap:{self.transport_id}:{now:%Y%m%d}"
            used = await self.redis.incr(key)
            if used == 1:
                await self.redis.expire(key, 2 * 86_400)
            if used > self.daily_cap:
                await self.redis.decr(key)
                tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0,
                                                             microsecond=0)
                return (tomorrow - now).total_seconds()
        if self.mps is not None:
            await self._slot()
        return None

    async def _slot(self) -> None:
        """Fixed one-second windows of `mps` sends each, across all workers."""
        assert self.mps is not None
        per_window = max(1, int(self.mps))
        while True:
            second = int(time.time())
            key = f"{REDIS_PREFIX}rate:{self.transport_id}:{second}"
            count = await self.redis.incr(key)
            if count == 1:
                await self.redis.expire(key, 3)
            if count <= per_window:
                return
            await asyncio.sleep(max(0.0, second + 1 - time.time()) + 0.001)
