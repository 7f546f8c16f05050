"""Provider limits per transport, shared by every worker through Redis: messages per
second (a send waits for its slot) and a daily cap (work over it is deferred to the next
UTC day, never dropped). The day's counter lives in Redis; if Redis loses it, counting
starts again from zero for that day.

Messages per second follow GCRA (a token bucket holding one token): Redis keeps the
transport's theoretical arrival time (TAT), the earliest moment the next message may go.
Each send reserves the slot `max(TAT, now)` and moves TAT one interval (1/mps) past it,
in one script on Redis's clock, so every worker process agrees; the sender then sleeps
until its slot. Sends are never closer than one interval, below 1 per second too, and an
idle transport saves up no burst. `SLOT_FUNCTION_LUA` is the one implementation, shared with
the voice carrier's calls per second (hub/voice/carrier.py).
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from hub.aredis import Lua
from hub.constants import REDIS_PREFIX

US_PER_S = 1_000_000
RATE_KEY_SLACK_MS = 1000  # the TAT outlives its last slot by this, then vanishes

# reserve_slot(key, interval, slack, horizon): `key` holds the TAT (µs since the epoch,
# Redis time); interval (µs); slack (ms); horizon: the furthest slot to reserve (µs from
# now; < 0: any). Reserves the next slot; returns µs from now until it, or -1 (nothing
# reserved) when the slot is further away than the horizon.
SLOT_FUNCTION_LUA = """
local function reserve_slot(key, interval, slack, horizon)
  local now_parts = redis.call('TIME')
  local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
  local tat = tonumber(redis.call('GET', key) or '0')
  local slot = math.max(tat, now)
  if horizon >= 0 and slot - now > horizon then
    return -1
  end
  local next_tat = slot + interval
  local ttl_ms = math.ceil((next_tat - now) / 1000) + slack
  redis.call('SET', key, string.format('%d', next_tat), 'PX', ttl_ms)
  return slot - now
end
"""
# KEYS[1] the TAT; ARGV[1..3] interval, slack, horizon (`slot_args`).
RESERVE_SLOT = Lua(SLOT_FUNCTION_LUA + """
return reserve_slot(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
""")


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
        wait_s = await reserve_slot(self.redis, f"{REDIS_PREFIX}rate:{self.transport_id}", mps)
        if wait_s:
            await asyncio.sleep(wait_s)


async def reserve_slot(redis: Redis, key: str, per_s: float,
                       max_wait_s: float | None = None) -> float | None:
    """Reserve the next of `per_s` slots per second kept under `key` (GCRA on Redis's
    clock); seconds from now until it. With `max_wait_s`, a slot further away than that is
    not reserved: None."""
    return slot_wait(await RESERVE_SLOT(redis, [key], slot_args(per_s, max_wait_s)))


def slot_args(per_s: float, max_wait_s: float | None) -> list[int]:
    """`reserve_slot`'s interval, slack and horizon for `per_s` slots per second."""
    interval_us = math.ceil(US_PER_S / per_s)  # rounded up: never faster than `per_s`
    horizon_us = -1 if max_wait_s is None else math.floor(max_wait_s * US_PER_S)
    return [interval_us, RATE_KEY_SLACK_MS, horizon_us]


def slot_wait(wait_us: Any) -> float | None:
    """Seconds until a reserved slot; None when none was reserved (< 0)."""
    wait = int(wait_us)
    return None if wait < 0 else wait / US_PER_S
