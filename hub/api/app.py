"""`create_app(settings)`: the aiohttp application with its pools and routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from redis import Redis

from hub.api import (
    apps,
    callbacks,
    dashboard,
    dashboard_auth,
    group,
    ops,
    sessions,
    storing,
    suppressions,
    transports,
    usage,
)
from hub.api import state as st
from hub.api.admission import IN_FLIGHT, InFlight, admission
from hub.api.middleware import auth, errors
from hub.api.receipts import ReceiptBatcher
from hub.aredis import async_redis
from hub.config import Settings
from hub.jobs.queueing import Kicker
from hub.store.db import create_pool
from hub.store.lookups import LookupCache, listen


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[errors, admission, auth], client_max_size=settings.body_max_bytes)
    app[st.SETTINGS] = settings
    app[IN_FLIGHT] = InFlight()
    app[callbacks.TRANSPORT_CACHE] = {}
    app[ops.METRICS_CACHE] = ops.MetricsCache(settings.metrics_cache_s)
    app[st.LOOKUPS] = LookupCache(settings.lookup_cache_s)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        app[st.POOL] = await create_pool(settings.database_url, min_size=0, max_size=20)
        redis = Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        app[st.KICKER] = Kicker(redis)
        aredis = async_redis(settings.redis_url, timeout_s=2, connect_timeout_s=2)
        app[st.KICKS] = st.Kicks(app[st.KICKER], aredis)
        app[storing.BATCHES] = storing.Batches(app[st.POOL])
        app[callbacks.RECEIPTS] = ReceiptBatcher(app[st.POOL], settings.base_url,
                                                   app[st.KICKER].webhooks)
        listener = asyncio.create_task(listen(settings.database_url, app[st.LOOKUPS]))
        yield
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await app[storing.BATCHES].commit.drain()
        await app[st.POOL].close()
        redis.close()
        await aredis.aclose()

    app.cleanup_ctx.append(resources)
    for module in (ops, sessions, transports, apps, suppressions, callbacks, usage, dashboard_auth,
                   dashboard):
        app.add_routes(module.routes)
    return app


def run(settings: Settings) -> None:
    web.run_app(create_app(settings), host=settings.api_host, port=settings.api_port,
                access_log=None, print=group.ready, reuse_port=group.folder() is not None)
