"""Test helpers: an API client, a webhook receiver, polling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import asyncpg
from aiohttp import web

from hub.store.apps import NewApp

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (for a process that moves on to the
    next port when its own is taken)."""
    while True:
        first = free_port()
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return first


class Api:
    def __init__(self, http: aiohttp.ClientSession, base: str, app: NewApp) -> None:
        self.http = http
        self.base = base
        self.app = app
        self.key = app.api_key

    async def call(self, method: str, path: str, body: Any = None, *, key: str | None = None,
                   headers: dict[str, str] | None = None, raw: bytes | None = None
                   ) -> tuple[int, Any]:
        hdrs = {"Authorization": f"Bearer {key or self.key}", **(headers or {})}
        kwargs: dict[str, Any] = {"headers": hdrs}
        if raw is not None:
            hdrs.setdefault("Content-Type", "application/json")
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        async with self.http.request(method, self.base + path, **kwargs) as resp:
            self.last_headers = resp.headers
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("POST", path, body, **kw)

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("GET", path, **kw)

    async def submit(self, instruction: dict[str, Any], expect: int = 201) -> dict[str, Any]:
        status, body = await self.post("/v1/sessions", instruction)
        assert status == expect, body
        return dict(body)

    async def session(self, sid: str) -> dict[str, Any]:
        status, body = await self.get(f"/v1/sessions/{sid}")
        assert status == 200, body
        return dict(body)

    async def deliveries(self, sid: str) -> dict[str, dict[str, Any]]:
        status, body = await self.get(f"/v1/sessions/{sid}/deliveries?limit=1000")
        assert status == 200, body
        return {d["address"]: d for d in body["items"]}

    async def wait_status(self, sid: str, statuses: tuple[str, ...] = ("completed",),
                          timeout_s: float = 30) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            s = await self.session(sid)
            return s if s["status"] in statuses else None
        return await eventually(check, timeout_s, f"session {sid} never reached {statuses}")


async def eventually(check: Callable[[], Awaitable[T | None]], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s: {what}")
        await asyncio.sleep(0.1)


async def waiting_for_a_lock(db: asyncpg.Pool, conn: asyncpg.Connection, what: str,
                             or_done: asyncio.Future[Any] | None = None) -> None:
    """Return once `conn`'s backend waits for a lock (a row another transaction holds), or
    once `or_done` is done."""
    pid = conn.get_server_pid()
    for _ in range(300):
        if or_done is not None and or_done.done():
            return
        if await db.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity"
                             " WHERE pid = $1", pid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} never waited for a lock")


async def local_server(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve `app` on a free loopback port: (runner to clean up, base URL)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


class WebhookReceiver:
    """A local HTTP endpoint that records every request (at arrival); `fail_next` answers
    500 first; `delay_s` makes it answer that much later (a slow receiver), `jitter_s` up to
    that much later again, at random."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes, float]] = []
        self.fail_next = 0
        self.delay_s = 0.0
        self.jitter_s = 0.0  # and up to this much more, at random (answers end apart)
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body, time.time()))
        if self.delay_s or self.jitter_s:
            await asyncio.sleep(self.delay_s + random.uniform(0, self.jitter_s))
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=500, text="receiver down")
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner, base = await local_server(app)
        self.url = f"{base}/hook"

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        out = []
        for _, body, _ in self.requests:
            event = json.loads(body)
            if type_ is None or event["type"] == type_:
                out.append(event)
        return out
