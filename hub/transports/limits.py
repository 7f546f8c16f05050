"""Provider limits per transport, shared by every worker through Redis: messages per
second (a send waits for its slot) and a daily cap (work over it is deferred to the next
UTC day, never dropped). The day's counter lives in Redis; if Redis loses it, counting
starts again from zero for that day.

Messages per second follow GCRA (a token bucket holding one token): Redis keeps the
transport's theoretical arrival time (TAT), the earliest moment the next message may go.
Each send reserves the slot `max(TAT, now)` and moves TAT one interval (1/mps) past it,
in one script on Redis's clock, so every worker process agrees; the sender then sleeps
until its slot. Sends are never closer than one interval, below 1 per second too, and an
idle transport saves up no burst.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from hub.constants import REDIS_PREFIX

US_PER_S = 1_000_000
RATE_KEY_SLACK_MS = 1000  # the TAT outlives its last slot by this, then vanishes

# KEYS[1] = the transport's TAT (µs since the epoch, Redis time); ARGV[1] = interval (µs),
# ARGV[2] = slack (ms). Reserves the next slot; returns µs from now until it.
RESERVE_SLOT_LUA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(tat, now)
local next_tat = slot + tonumber(ARGV[1])
local ttl_ms = math.ceil((next_tat - now) / 1000) + tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', ttl_ms)
return slot - now
"""


class Limiter:
    def __init__(self, redis: Redis, transport_id: str, mps: float | None,
                 daily_cap: int | None) -> None:
        self.redis = redis
        self.transport_id = transport_id
        self._mps = mps
        self.daily_cap = daily_cap

    @property
    def mps(self) -> float | None:
        """The transport's configured messages per second (None: unlimited)."""
        return self._mps

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
        if self._mps is not None:
            await self._slot(self._mps)
        return None

    async def _slot(self, mps: float) -> None:
        """Reserve the next send slot across all workers and sleep until it comes."""
        interval_us = math.ceil(US_PER_S / mps)  # rounded up: never faster than `mps`
        wait_us = await self.redis.eval(
            RESERVE_SLOT_LUA, 1, f"{REDIS_PREFIX}rate:{self.transport_id}", interval_us,
            RATE_KEY_SLACK_MS)
        if wait_us > 0:
            await asyncio.sleep(wait_us / US_PER_S)
