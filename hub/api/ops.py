"""Unauthenticated operational endpoints: health, readiness, metrics, spec, docs."""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from hub.api import state as st
from hub.api.openapi import build_spec
from hub.constants import QUEUES
from hub.errors import Unavailable
from hub.jobs.queueing import VOICE_ACTIVE_KEY, VOICE_SETUP_KEY

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


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    pool = st.pool(request)
    lines = ["# HELP hub_deliveries_total Deliveries by transport and status.",
             "# TYPE hub_deliveries_total gauge"]
    for r in await pool.fetch(
        "SELECT s.transport_type AS t, d.status, count(*) AS n FROM deliveries d"
        " JOIN sessions s ON s.id = d.session_id GROUP BY 1, 2 ORDER BY 1, 2"
    ):
        lines.append(f'hub_deliveries_total{{transport="{r["t"]}",status="{r["status"]}"}} {r["n"]}')
    lines += ["# HELP hub_sessions Sessions by status.", "# TYPE hub_sessions gauge"]
    for r in await pool.fetch("SELECT status, count(*) AS n FROM sessions GROUP BY 1 ORDER BY 1"):
        lines.append(f'hub_sessions{{status="{r["status"]}"}} {r["n"]}')
    waiting = await pool.fetchval("SELECT count(*) FROM webhook_events WHERE status = 'pending'")
    lines += ["# HELP hub_webhooks_pending Webhook events waiting to be delivered.",
              "# TYPE hub_webhooks_pending gauge", f"hub_webhooks_pending {waiting}",
              "# HELP hub_queue_depth Jobs waiting per RQ queue.", "# TYPE hub_queue_depth gauge"]
    redis = request.app[st.KICKER].redis
    try:
        depths = await asyncio.to_thread(lambda: [redis.llen(f"rq:queue:{q}") for q in QUEUES])
        lines += [f'hub_queue_depth{{queue="{q}"}} {n}' for q, n in zip(QUEUES, depths, strict=True)]
        lines += await asyncio.to_thread(_voice_lines, redis)
    except (RedisError, OSError):
        pass
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


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
    lines += [f'hub_calls_active{{trunk="{t}"}} {n}' for t, n in sorted(active.items())]
    lines += ["# HELP hub_call_setup_seconds Time from originate to answer.",
              "# TYPE hub_call_setup_seconds summary",
              f"hub_call_setup_seconds_sum {setup.get('sum', 0.0)}",
              f"hub_call_setup_seconds_count {int(setup.get('count', 0))}"]
    return lines
