"""`hub worker`: an RQ worker, RQ's scheduler and the reconciler, in one process.

RQ's own `--with-scheduler` forks a scheduler process that outlives a SIGKILLed worker;
here the scheduler runs in a thread instead (RQ's per-queue scheduler locks still let
only one worker move scheduled jobs at a time), so killing a worker kills all of it.
A maintenance thread runs the reconciler; a Redis lock lets one pass run per interval
across all workers, so any surviving worker keeps the hub consistent.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.scheduler import RQScheduler

from hub.config import Settings
from hub.constants import RECONCILER_LOCK_KEY, SCHEDULER_LOCK_KEY
from hub.jobs.queueing import Kicker
from hub.jobs.reconciler import reconcile
from hub.store.db import connect

log = logging.getLogger(__name__)
SCHEDULER_INTERVAL_S = 1.0
SCHEDULER_LOCK_MS = 3000
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


def _hold(redis: Redis, key: str, token: str, ttl_ms: int) -> bool:
    """Take or keep a short lock; a dead holder's lock lapses after `ttl_ms`."""
    if redis.set(key, token, nx=True, px=ttl_ms):
        return True
    if redis.get(key) == token.encode():
        redis.pexpire(key, ttl_ms)
        return True
    return False


def _scheduler(settings: Settings, queues: tuple[str, ...], stop: threading.Event) -> None:
    """Move due `enqueue_at` jobs (retries, scheduled sessions) onto their queues.

    RQ's scheduler locks live 61 s, so a killed worker would stall retries for a minute;
    a 3 s lock of our own hands the job to a surviving worker almost at once.
    """
    redis = Redis.from_url(settings.redis_url)
    scheduler = RQScheduler(queues, connection=redis, interval=SCHEDULER_INTERVAL_S)
    token = uuid.uuid4().hex
    while not stop.wait(SCHEDULER_INTERVAL_S):
        try:
            if _hold(redis, SCHEDULER_LOCK_KEY, token, SCHEDULER_LOCK_MS):
                scheduler.prepare_registries(queues)
                scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]
        except (RedisError, OSError) as exc:
            log.warning("scheduler pass skipped: %s", exc)


def run_worker(settings: Settings, queues: tuple[str, ...], *, burst: bool = False) -> None:
    redis = Redis.from_url(settings.redis_url)
    stop = threading.Event()
    for target, args, name in ((_maintenance, (settings, stop), "hub-reconciler"),
                               (_scheduler, (settings, queues, stop), "hub-scheduler")):
        threading.Thread(target=target, args=args, daemon=True, name=name).start()
    try:
        worker = SimpleWorker([Queue(q, connection=redis) for q in queues], connection=redis)
        worker.work(burst=burst, logging_level=settings.log_level)
    finally:
        stop.set()
