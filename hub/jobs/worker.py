"""`hub worker`: an RQ worker, RQ's scheduler and the reconciler, in one process.

RQ's own `--with-scheduler` forks a scheduler process that outlives a SIGKILLed worker;
here the scheduler runs in a thread instead, so killing a worker kills all of it. A
short lock per queue lets one worker at a time move that queue's scheduled jobs; every
queue is covered by some worker serving it, whatever other queues that worker serves.
A maintenance thread runs the reconciler; a Redis lock lets one pass run per interval
across all workers, so any surviving worker keeps the hub consistent.

A worker serving `webhooks` drains the webhook outbox in a thread of its own (when kicked,
and every WEBHOOK_SWEEP_S), not as RQ jobs: a slow or dead receiver never holds the worker
away from delivery jobs. Several workers' drains share the per-URL and per-app caps, which
are counted from the events' leases in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.scheduler import RQScheduler

from hub.config import Settings
from hub.constants import QUEUES, RECONCILER_LOCK_KEY, SCHEDULER_LOCK_PREFIX
from hub.jobs.jobloop import close_all
from hub.jobs.queueing import WEBHOOKS_KICK_KEY, Kicker
from hub.jobs.reconciler import reconcile
from hub.jobs.webhook_sender import outbox_drainer
from hub.observe import metrics
from hub.store.db import connect

log = logging.getLogger(__name__)
WEBHOOK_POLL_S = 0.25
WEBHOOK_SWEEP_S = 2.0
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


# Take or keep each lock (KEYS) for ARGV[1] (token) for ARGV[2] ms; 1 where held.
HOLD_LOCKS_LUA = """
local held = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    held[i] = 1
  elseif redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    held[i] = 1
  else
    held[i] = 0
  end
end
return held
"""


def _held_queues(redis: Redis, queues: tuple[str, ...], token: str) -> list[str]:
    """The queues whose scheduler lock this worker takes or keeps; a dead holder's lock
    lapses after SCHEDULER_LOCK_MS."""
    flags = redis.eval(HOLD_LOCKS_LUA, len(queues),
                       *(SCHEDULER_LOCK_PREFIX + q for q in queues), token, SCHEDULER_LOCK_MS)
    return [q for q, flag in zip(queues, flags, strict=True) if flag]


def _scheduler(settings: Settings, queues: tuple[str, ...], stop: threading.Event) -> None:
    """Move due `enqueue_at` jobs (retries, scheduled sessions) onto their queues.

    One lock per queue, so a worker serving other queues never holds back this one's.
    RQ's scheduler locks live 61 s, so a killed worker would stall retries for a minute;
    3 s locks of our own hand each queue to a surviving worker almost at once.
    """
    redis = Redis.from_url(settings.redis_url)
    scheduler = RQScheduler(queues, connection=redis, interval=SCHEDULER_INTERVAL_S)
    token = uuid.uuid4().hex
    while not stop.wait(SCHEDULER_INTERVAL_S):
        try:
            held = _held_queues(redis, queues, token)
            if held:
                scheduler.prepare_registries(held)
                scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]
        except (RedisError, OSError) as exc:
            log.warning("scheduler pass skipped: %s", exc)


def _webhooks(settings: Settings, stop: threading.Event) -> None:
    """Drain the webhook outbox when kicked, and every WEBHOOK_SWEEP_S for retries, on
    one event loop with one pool kept for the thread's life."""
    asyncio.run(_webhook_loop(settings, stop))


async def _webhook_loop(settings: Settings, stop: threading.Event) -> None:
    redis = Redis.from_url(settings.redis_url)
    last = 0.0
    async with outbox_drainer(settings) as drain_once:
        while not stop.is_set():
            await asyncio.sleep(WEBHOOK_POLL_S)
            try:
                if redis.getdel(WEBHOOKS_KICK_KEY) or time.monotonic() - last >= WEBHOOK_SWEEP_S:
                    last = time.monotonic()
                    await drain_once()
            except (RedisError, OSError) as exc:
                log.warning("webhook drain skipped: %s", exc)
            except Exception:  # keep draining whatever one pass hit
                log.exception("webhook drain failed")


def lower_priority(nice: int) -> None:
    """Run this process at CPU niceness `nice` (never raising its priority), before it
    starts any thread: on Linux each thread has its own niceness and new ones inherit it.

    A worker is throughput work; the API answering clients (and the voice controller
    timing calls) is latency work. On a host they share, a worker busy with a backlog
    took the CPU the API needed: two-recipient submissions at 300 req/s went from p99
    16 ms with the worker paused to 52–96 ms with it running, and to ~20 ms with it at
    niceness 19 (bench/README). An idle CPU is still the worker's in full."""
    if nice > os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def run_worker(settings: Settings, queues: tuple[str, ...], *, burst: bool = False) -> None:
    lower_priority(settings.worker_nice)
    redis = Redis.from_url(settings.redis_url)
    metrics.WORKER.register(metrics.QueueDepth(QUEUES, lambda q: int(redis.llen(f"rq:queue:{q}"))))
    metrics.serve(metrics.WORKER, settings.metrics_host, settings.worker_metrics_port, "worker")
    stop = threading.Event()
    threads: list[tuple[Callable[..., None], tuple[Any, ...], str]] = [
        (_maintenance, (settings, stop), "hub-reconciler"),
        (_scheduler, (settings, queues, stop), "hub-scheduler")]
    if "webhooks" in queues:
        threads.append((_webhooks, (settings, stop), "hub-webhooks"))
    for target, args, name in threads:
        threading.Thread(target=target, args=args, daemon=True, name=name).start()
    try:
        # `webhooks` stays an RQ queue too, for jobs an earlier version enqueued.
        worker = SimpleWorker([Queue(q, connection=redis) for q in queues], connection=redis)
        worker.work(burst=burst, logging_level=settings.log_level)
    finally:
        stop.set()
        close_all()
