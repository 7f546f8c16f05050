"""Pieces shared by the HTTP-based transports (Slack, generic API, Twilio): the guarded
HTTP session, classifying HTTP answers and connection errors (no secrets in the text),
Retry-After, and the per-transport limiter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from hub.aredis import async_redis
from hub.config import Settings
from hub.net import BlockedURL, Guard, guarded_session, redact
from hub.transports.base import Result
from hub.transports.limits import Limiter

DEFAULT_RETRY_AFTER_S = 30.0
RESPONSE_MAX_CHARS = 500  # of a provider's answer kept in a delivery's detail
ERROR_BODY_MAX_CHARS = 200  # of a provider's answer quoted in a delivery's error


def retry_after_s(header: str | None) -> float:
    try:
        return max(0.0, float(header)) if header else DEFAULT_RETRY_AFTER_S
    except ValueError:
        return DEFAULT_RETRY_AFTER_S


def http_failure(status: int, body: str, retry_after: str | None, provider: str,
                 secrets: tuple[str | None, ...] = ()) -> Result:
    """429 waits as told (no retry spent); 5xx, 408 retry; other 4xx (and redirects,
    which are not followed) are permanent. The answer is kept truncated, secrets out."""
    info = {"httpStatus": status, "response": redact(body[:RESPONSE_MAX_CHARS], *secrets)}
    error = f"{provider} answered HTTP {status}: {redact(body[:ERROR_BODY_MAX_CHARS], *secrets)}"
    if status == 429:
        return Result("rate_limited", defer_s=retry_after_s(retry_after), detail=info, error=error)
    if status >= 500 or status == 408:
        return Result("temporary_failure", retryable=True, detail=info, error=error)
    return Result("permanent_failure", detail=info, error=error)


def unreachable(exc: BaseException, provider: str, secrets: tuple[str | None, ...] = ()
                ) -> Result:
    """A request that got no answer: a refused destination is permanent (and says no more
    than that); connection trouble and timeouts are retried. No credentials or secrets
    (e.g. a Slack webhook URL) in the text."""
    if isinstance(exc, BlockedURL):
        return Result("permanent_failure",
                      error=f"{provider}: {redact(str(exc), *secrets)}")
    text = str(exc) or ("no answer in time" if isinstance(exc, TimeoutError)
                        else type(exc).__name__)
    return Result("temporary_failure", retryable=True,
                  error=f"{provider} unreachable: {redact(text, *secrets)}")


def over_cap(limiter: Limiter, wait_s: float) -> Result:
    return Result("deferred", defer_s=wait_s, attempted=False,
                  error=f"daily cap of {limiter.daily_cap} reached; resumes at 00:00 UTC")


@asynccontextmanager
async def limiter_for(settings: Settings, transport_id: str, mps: float | None,
                      daily_cap: int | None) -> AsyncIterator[Limiter]:
    redis = async_redis(settings.redis_url)
    try:
        yield Limiter(redis, transport_id, mps, daily_cap)
    finally:
        await redis.aclose()


@asynccontextmanager
async def http_with_limits(settings: Settings, transport_id: str, timeout_s: float,
                           mps: float | None, daily_cap: int | None
                           ) -> AsyncIterator[tuple[aiohttp.ClientSession, Limiter]]:
    """A guarded HTTP session with the transport's time limit, and its shared limiter."""
    async with guarded_session(Guard.of(settings),
                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as http, \
            limiter_for(settings, transport_id, mps, daily_cap) as limiter:
        yield http, limiter
