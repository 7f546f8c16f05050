"""Local stand-ins for Slack (Web API `chat.postMessage` and incoming webhooks) and for any
REST provider (an HTTP sink), as real aiohttp servers for the tests and the benchmarks.

Slack scripts per channel: "ok" | "error:channel_not_found" | "ratelimited:2" (HTTP 429,
Retry-After 2) | "status:500". The sink answers every request with `status` and
`{"ok": true, "id": "msg-N", "results": [{"id": ...} per item of a list body]}`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.time)


class FakeServer:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self, port: int, host: str = "127.0.0.1") -> None:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> Seen:
        if request.content_type == "application/json":
            body: Any = await request.json()
        elif request.content_type == "application/x-www-form-urlencoded":
            body = {k: str(v) for k, v in (await request.post()).items()}
        else:
            body = (await request.read()).decode(errors="replace")
        seen = Seen(request.path_qs, dict(request.headers), body)
        self.seen.append(seen)
        return seen


class FakeSlack(FakeServer):
    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.scripts: dict[str, list[str]] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/chat.postMessage", self.post_message)
        app.router.add_post("/hooks/{hook:.*}", self.webhook)

    def _script(self, channel: str) -> str:
        queue = self.scripts.get(channel)
        return queue.pop(0) if queue else "ok"

    async def post_message(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        channel = str(seen.body.get("channel", ""))
        script = self._script(channel)
        if script.startswith("ratelimited:"):
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": script.split(":")[1]})
        if script.startswith("status:"):
            return web.Response(status=int(script.split(":")[1]), text="server error")
        if script.startswith("error:"):
            return web.json_response({"ok": False, "error": script.split(":")[1]})
        return web.json_response({"ok": True, "channel": channel, "ts": f"{time.time():.6f}",
                                  "message": {"text": seen.body.get("text")}})

    async def webhook(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        script = self._script(str(seen.body.get("channel", "")))
        if script.startswith("ratelimited:"):
            return web.Response(status=429, text="rate_limited",
                                headers={"Retry-After": script.split(":")[1]})
        if script.startswith("error:"):
            return web.Response(status=404, text=script.split(":")[1])
        return web.Response(text="ok")

    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith(("/api/chat.postMessage", "/hooks/"))]


class HttpSink(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.status = 200
        self.answer: dict[str, Any] | None = None

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        n = len(self.seen)
        if self.answer is not None:
            return web.json_response(self.answer, status=self.status)
        items = next((v for v in seen.body.values() if isinstance(v, list)), []) \
            if isinstance(seen.body, dict) else []
        return web.json_response({"ok": True, "id": f"msg-{n}",
                                  "results": [{"id": f"msg-{n}-{i}"} for i in range(len(items))]},
                                 status=self.status)
