"""The API baseline, in its own process: an aiohttp handler that reads the JSON body, does
one INSERT through an asyncpg pool and answers 201 with the new id — the least a service
storing a submission can do.

    python -m bench.baseline_api PORT DSN
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

POOL = web.AppKey("pool", asyncpg.Pool)


async def submit(request: web.Request) -> web.Response:
    doc = json.loads(await request.read())
    sid = uuid.uuid4()
    await request.app[POOL].execute(
        "INSERT INTO bench_baseline (id, body) VALUES ($1, $2::jsonb)", sid, json.dumps(doc))
    return web.json_response({"sessionId": str(sid), "status": "queued"}, status=201)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def app(dsn: str) -> web.Application:
    application = web.Application()

    async def pool(application: web.Application) -> AsyncIterator[None]:
        application[POOL] = p = await asyncpg.create_pool(dsn, min_size=2, max_size=20)
        await p.execute("CREATE TABLE IF NOT EXISTS bench_baseline (id uuid PRIMARY KEY,"
                        " body jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")
        yield
        await p.close()

    application.cleanup_ctx.append(pool)
    application.router.add_post("/v1/sessions", submit)
    application.router.add_get("/healthz", healthz)
    return application


if __name__ == "__main__":
    web.run_app(app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
                print=None)
