"""Operational endpoints without an API key: health, readiness, metrics (behind
`HUB_METRICS_TOKEN` when set), spec, docs."""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from hub.api import group
from hub.api import state as st
from hub.api.openapi import build_spec
from hub.constants import QUEUES
from hub.errors import Unauthorized, Unavailable
from hub.jobs.queueing import VOICE_ACTIVE_KEY, VOICE_SETUP_KEY
from hub.store import metrics as metric_counts

routes = web.RouteTableDef()
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    problems = {}
    try:
        await asyncio.wait_for(st.pool(request).fetchval("SELECT 1"), 2.0)
    except Exception as exc:  # any driver error means "not ready"
        problems["postgres"] = f"{type(exc).__name__}: {exc}"
    try:
        await asyncio.wait_for(asyncio.to_thread(request.app[st.KICKER].redis.ping), 2.0)
    except (RedisError, OSError, TimeoutError) as exc:
        problems["redis"] = f"{type(exc).__name__}: {exc}"
    if problems:
        raise Unavailable(f"not ready: {', '.join(problems)} unreachable",
                          error_id="dependency-unavailable", details=problems)
    return web.json_response({"status": "ready", "postgres": "ok", "redis": "ok"})


class MetricsCache:
    """The last `/metrics` page, kept `ttl_s` seconds; one refresh at a time (single
    flight): however many scrapers arrive, at most one of them reads the database."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._text = ""
        self._at = -math.inf
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        return time.monotonic() - self._at < self.ttl_s

    async def get(self, build: Callable[[], Awaitable[str]]) -> str:
        if self._fresh():
            return self._text
        async with self._lock:
            if not self._fresh():
                self._text = await build()
                self._at = time.monotonic()
            return self._text


METRICS_CACHE = web.AppKey("metrics_cache", MetricsCache)


def label(value: object) -> str:
    """A label value escaped as the Prometheus text format requires."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _check_metrics_token(request: web.Request) -> None:
    token = st.settings(request).metrics_token
    if not token:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "backslashreplace"), token.encode()):
        raise Unauthorized("/metrics needs 'Authorization: Bearer <HUB_METRICS_TOKEN>'",
                           error_id="invalid-metrics-token",
                           headers={"WWW-Authenticate": 'Bearer realm="metrics"'})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    _check_metrics_token(request)
    text = await request.app[METRICS_CACHE].get(lambda: _render(request.app))
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


async def _render(app: web.Application) -> str:
    counts = await metric_counts.read(app[st.POOL])
    lines = ["# HELP hub_deliveries_total Deliveries by transport and status.",
             "# TYPE hub_deliveries_total gauge"]
    lines += [f'hub_deliveries_total{{transport="{label(t)}",status="{label(s)}"}} {n}'
              for (t, s), n in counts.deliveries.items()]
    lines += ["# HELP hub_sessions Sessions by status.", "# TYPE hub_sessions gauge"]
    lines += [f'hub_sessions{{status="{label(s)}"}} {n}' for s, n in counts.sessions.items()]
    lines += ["# HELP hub_webhooks_pending Webhook events waiting to be delivered.",
              "# TYPE hub_webhooks_pending gauge", f"hub_webhooks_pending {counts.webhooks_pending}",
              "# HELP hub_queue_depth Jobs waiting per RQ queue.", "# TYPE hub_queue_depth gauge"]
    redis = app[st.KICKER].redis
    try:
        depths = await asyncio.to_thread(lambda: [redis.llen(f"rq:queue:{q}") for q in QUEUES])
        lines += [f'hub_queue_depth{{queue="{label(q)}"}} {n}'
                  for q, n in zip(QUEUES, depths, strict=True)]
        lines += await asyncio.to_thread(_voice_lines, redis)
    except (RedisError, OSError):
        pass
    return "\n".join(lines) + "\n" + await asyncio.to_thread(group.exposition)


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(build_spec())


@routes.get("/docs")
async def docs(request: web.Request) -> web.Response:
    page = (resources.files("hub.api") / "docs.html").read_text()
    return web.Response(text=page, content_type="text/html")


def _voice_lines(redis: Any) -> list[str]:
    active: dict[str, int] = {}
    for key in redis.scan_iter(f"{VOICE_ACTIVE_KEY}:*"):
        for trunk, n in redis.hgetall(key).items():
            active[trunk.decode()] = active.get(trunk.decode(), 0) + int(n)
    setup = {k.decode(): float(v) for k, v in redis.hgetall(VOICE_SETUP_KEY).items()}
    lines = ["# HELP hub_calls_active Calls in progress per trunk.", "# TYPE hub_calls_active gauge"]
    lines += [f'hub_calls_active{{trunk="{label(t)}"}} {n}' for t, n in sorted(active.items())]
    lines += ["# HELP hub_call_setup_seconds Time from originate to answer.",
              "# TYPE hub_call_setup_seconds summary",
              f"hub_call_setup_seconds_sum {setup.get('sum', 0.0)}",
              f"hub_call_setup_seconds_count {int(setup.get('count', 0))}"]
    return lines
