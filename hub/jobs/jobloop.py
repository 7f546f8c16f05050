"""One event loop per worker process for its delivery jobs, with the connections they
share: a PostgreSQL pool and the Redis clients, opened once and kept between jobs, and
the SMTP connections kept between sessions (`hub.transports.smtp_pool`).

RQ runs a job as a plain function call; each used to `asyncio.run` a fresh loop and open
a fresh pool (a PostgreSQL backend, its authentication and the JSON codecs' type
queries) and fresh Redis connections. For a big session that is nothing; for thousands
of small sessions a second (an API submitting two-recipient instructions) it was most of
the worker's work and a storm of new connections for PostgreSQL. Here the loop runs in a
thread of its own for the process's life; a job submits its coroutine to it and waits.

If RQ interrupts the job (its timeout, a warm shutdown), the job's coroutine is
cancelled in the loop too, so nothing keeps sending after RQ has given the job up.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from hub.aredis import async_redis
from hub.config import Settings
from hub.store.db import Pool, create_pool
from hub.transports import smtp_pool

T = TypeVar("T")
# A session's job holds up to 3 at once (claims, renewals, recording); a job serving
# several sessions runs up to 4 of them at a time, which share these.
POOL_MAX = 8


@dataclass
class Shared:
    """What every job of this process uses (opened in the job loop, on first use)."""

    pool: Pool
    redis: Redis           # blocking client, for the kicker's calls in threads
    aredis: AsyncRedis


class JobLoop:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._shared: Shared | None = None
        self._opening = asyncio.Lock()
        self._smtp = smtp_pool.Pools()
        threading.Thread(target=self.loop.run_forever, name="hub-jobs", daemon=True).start()

    def run(self, job: Callable[[Shared], Awaitable[T]]) -> T:
        """Run `job` on the loop with the shared connections; wait for its result."""
        future = asyncio.run_coroutine_threadsafe(self._with_shared(job), self.loop)
        try:
            return future.result()
        except BaseException:  # RQ's timeout or shutdown, raised in this thread
            future.cancel()
            raise

    async def _with_shared(self, job: Callable[[Shared], Awaitable[T]]) -> T:
        with smtp_pool.kept(self._smtp):
            return await job(await self.shared())

    async def shared(self) -> Shared:
        async with self._opening:
            if self._shared is None:
                pool = await create_pool(self.settings.database_url, min_size=0,
                                         max_size=POOL_MAX, custom_plans=True)
                self._shared = Shared(pool, Redis.from_url(self.settings.redis_url),
                                      async_redis(self.settings.redis_url))
            return self._shared

    async def close(self) -> None:
        if self._shared is not None:
            await self._shared.pool.close()
            await self._shared.aredis.aclose()
            self._shared.redis.close()
            self._shared = None
        await self._smtp.close()  # last: a slow SMTP server holds nothing else up


_loops: dict[tuple[str, str], JobLoop] = {}
_lock = threading.Lock()


def job_loop(settings: Settings) -> JobLoop:
    """This process's job loop for these settings' database and Redis."""
    key = (settings.database_url, settings.redis_url)
    with _lock:
        if key not in _loops:
            _loops[key] = JobLoop(settings)
        return _loops[key]


def run_job(settings: Settings, job: Callable[[Shared], Awaitable[Any]]) -> Any:
    return job_loop(settings).run(job)


def close_all(timeout_s: float = 5.0) -> None:
    """Close the job loops' connections (a worker leaving); best effort."""
    with _lock:
        loops = list(_loops.values())
        _loops.clear()
    for jl in loops:
        future = asyncio.run_coroutine_threadsafe(jl.close(), jl.loop)
        try:
            future.result(timeout_s)
        except Exception:  # noqa: BLE001 (leaving anyway)
            future.cancel()
        jl.loop.call_soon_threadsafe(jl.loop.stop)
