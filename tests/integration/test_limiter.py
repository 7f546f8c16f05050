"""The per-transport limiter on the real Redis, as several worker processes share it."""

from __future__ import annotations

import asyncio
import time
import uuid

from redis.asyncio import Redis

from hub.transports.limits import Limiter
from tests.conftest import REDIS_URL


async def _grants(limiter: Limiter, until: float) -> list[float]:
    stamps: list[float] = []
    while time.monotonic() < until:
        assert await limiter.acquire() is None
        stamps.append(time.monotonic())
    return stamps


async def test_two_workers_share_one_transports_rate() -> None:
    transport_id = str(uuid.uuid4())
    first, second = Redis.from_url(REDIS_URL), Redis.from_url(REDIS_URL)  # two workers
    try:
        until = time.monotonic() + 2.0
        grants = await asyncio.gather(*(_grants(Limiter(r, transport_id, 10, None), until)
                                        for r in (first, second)))
    finally:
        await first.aclose()
        await second.aclose()
    assert all(grants)  # both workers got to send
    stamps = sorted(grants[0] + grants[1])
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    # 10 per second together, never two at once; 0.03 s for a sleeper woken late on a
    # loaded machine (the next one keeps its own slot, so that gap shrinks by as much)
    assert min(gaps) >= 0.1 - 0.03, gaps
    assert sorted(gaps)[len(gaps) // 2] >= 0.1 - 0.005, gaps  # typically one interval
    # over the 2 s (a grant the loop waited for before `until` may land after it)
    assert len([s for s in stamps if s < until]) <= 2.0 * 10 + 2
