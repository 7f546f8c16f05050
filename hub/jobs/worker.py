"""`hub worker`: an RQ worker (with RQ's scheduler) plus the reconciler's heartbeat.

Each worker runs a maintenance thread; a Redis lock lets one reconciler pass run per
interval across all workers, so any surviving worker keeps the hub consistent.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker

from hub.config import Settings
from hub.constants import RECONCILER_LOCK_KEY
from hub.jobs.queueing import Kicker
from hub.jobs.reconciler import reconcile
from hub.store.db import connect

log = logging.getLogger(__name__)
DEFAULT_QUEUES = ("email", "sms", "whatsapp", "slack", "api", "webhooks", "maintenance")


async def reconcile_once(settings: Settings) -> None:
    redis = Redis.from_url(settings.redis_url)
    conn = await connect(settings.database_url)
    try:
        await reconcile(conn, Kicker(redis), settings)
    finally:
        await conn.close()
        redis.close()


def _maintenance(settings: Settings, stop: threading.Event) -> None:
    redis = Redis.from_url(settings.redis_url)
    hold_ms = max(1, int(settings.reconcile_interval_s * 900))
    while not stop.wait(settings.reconcile_interval_s):
        try:
            if redis.set(RECONCILER_LOCK_KEY, 1, nx=True, px=hold_ms):
                asyncio.run(reconcile_once(settings))
        except (RedisError, OSError) as exc:
            log.warning("reconciler pass skipped: %s", exc)
        except Exception:  # keep the heartbeat alive whatever one pass hit
            log.exception("reconciler pass failed")


def run_worker(settings: Settings, queues: tuple[str, ...], *, burst: bool = False) -> None:
    redis = Redis.from_url(settings.redis_url)
    stop = threading.Event()
    thread = threading.Thread(target=_maintenance, args=(settings, stop), daemon=True,
                              name="hub-reconciler")
    thread.start()
    try:
        worker = SimpleWorker([Queue(q, connection=redis) for q in queues], connection=redis)
        worker.work(with_scheduler=True, burst=burst, logging_level=settings.log_level)
    finally:
        stop.set()
