"""Putting work on RQ queues. Redis is only a transport: every job can be recreated from
PostgreSQL by the reconciler, so a lost job delays work but never loses it."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job

from hub.constants import JOB_FAILURE_TTL_S, JOB_RESULT_TTL_S, JOB_TIMEOUT_S, REDIS_PREFIX

log = logging.getLogger(__name__)

DELIVER_FUNC = "hub.jobs.deliver.deliver_session"
WEBHOOKS_FUNC = "hub.jobs.webhook_sender.send_due_webhooks"
WEBHOOKS_KICK_KEY = REDIS_PREFIX + "kick:webhooks"
VOICE_ACTIVE_KEY = REDIS_PREFIX + "voice:active"
VOICE_SETUP_KEY = REDIS_PREFIX + "voice:setup"


class Kicker:
    """Enqueues delivery and webhook jobs; failures are logged, never raised."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def _queue(self, name: str) -> Queue:
        return Queue(name, connection=self.redis)

    def session(
        self, session_id: str, transport_type: str, *, parallel: int = 1, at: datetime | None = None
    ) -> bool:
        """Start `parallel` delivery jobs for a session now, or one at `at`."""
        if transport_type == "voice":
            return True  # the voice controller claims its own work
        queue = self._queue(transport_type)
        opts = {"job_timeout": JOB_TIMEOUT_S, "result_ttl": JOB_RESULT_TTL_S,
                "failure_ttl": JOB_FAILURE_TTL_S}
        try:
            if at is not None and at > datetime.now(UTC):
                # RQ's scheduler keeps whole seconds and may fire up to 1 s early: round up.
                second = math.ceil(at.timestamp())
                job_id = f"deliver-{session_id}-{second}"
                if not Job.exists(job_id, connection=self.redis):
                    queue.enqueue_at(datetime.fromtimestamp(second, UTC), DELIVER_FUNC,
                                     session_id, job_id=job_id, **opts)
                return True
            for _ in range(max(1, parallel)):
                queue.enqueue(DELIVER_FUNC, session_id, **opts)
        except RedisError as exc:
            log.warning("could not enqueue session %s (the reconciler will): %s", session_id, exc)
            return False
        return True

    def webhooks(self) -> bool:
        """Ask for a webhook drain; at most one kick per half second (the drain loops)."""
        try:
            if self.redis.set(WEBHOOKS_KICK_KEY, 1, nx=True, px=500):
                self._queue("webhooks").enqueue(
                    WEBHOOKS_FUNC, job_timeout=JOB_TIMEOUT_S, result_ttl=0,
                    failure_ttl=JOB_FAILURE_TTL_S,
                )
        except RedisError as exc:
            log.warning("could not enqueue webhook delivery (the reconciler will): %s", exc)
            return False
        return True

    def publish_voice(self, owner: str, active: dict[str, int], setup_s: list[float]) -> None:
        """Live voice figures for /metrics (kept 10 s: a dead controller stops counting)."""
        pipe = self.redis.pipeline()
        key = f"{VOICE_ACTIVE_KEY}:{owner}"
        pipe.delete(key)
        if active:
            pipe.hset(key, mapping=dict[Any, Any](active))
        pipe.expire(key, 10)
        if setup_s:
            pipe.hincrbyfloat(VOICE_SETUP_KEY, "sum", sum(setup_s))
            pipe.hincrby(VOICE_SETUP_KEY, "count", len(setup_s))
        pipe.execute()
