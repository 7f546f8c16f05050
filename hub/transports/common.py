"""Pieces shared by the HTTP-based transports (Slack, generic API): classifying HTTP
answers, Retry-After, and the per-transport limiter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from redis.asyncio import Redis

from hub.config import Settings
from hub.transports.base import Result
from hub.transports.limits import Limiter

DEFAULT_RETRY_AFTER_S = 30.0


def retry_after_s(header: str | None) -> float:
    try:
        return max(0.0, float(header)) if header else DEFAULT_RETRY_AFTER_S
    except ValueError:
        return DEFAULT_RETRY_AFTER_S


def http_failure(status: int, body: str, retry_after: str | None, provider: str) -> Result:
    """429 waits as told (no retry spent); 5xx, 408 retry; other 4xx are permanent."""
    info = {"httpStatus": status, "response": body[:500]}
    error = f"{provider} answered HTTP {status}: {body[:200]}"
    if status == 429:
        return Result("rate_limited", defer_s=retry_after_s(retry_after), detail=info, error=error)
    if status >= 500 or status == 408:
        return Result("temporary_failure", retryable=True, detail=info, error=error)
    return Result("permanent_failure", detail=info, error=error)


def over_cap(limiter: Limiter, wait_s: float) -> Result:
    return Result("deferred", defer_s=wait_s, attempted=False,
                  error=f"daily cap of {limiter.daily_cap} reached; resumes at 00:00 UTC")


@asynccontextmanager
async def limiter_for(settings: Settings, transport_id: str, mps: float | None,
                      daily_cap: int | None) -> AsyncIterator[Limiter]:
    redis = Redis.from_url(settings.redis_url)
    try:
        yield Limiter(redis, transport_id, mps, daily_cap)
    finally:
        await redis.aclose()


@asynccontextmanager
async def http_with_limits(settings: Settings, transport_id: str, timeout_s: float,
                           mps: float | None, daily_cap: int | None
                           ) -> AsyncIterator[tuple[aiohttp.ClientSession, Limiter]]:
    """An HTTP session with the transport's time limit, and its shared limiter."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http, \
            limiter_for(settings, transport_id, mps, daily_cap) as limiter:
        yield http, limiter
