"""Loopback pieces for the trust-boundary tests: hosts-file names, a listener that only
counts connections, and a redirector. Everything listens on 127.0.0.1 / ::1 only."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from tests.helpers import local_server

HOSTS = Path("/etc/hosts")
MARK = "# hub-test-guard"


@contextlib.contextmanager
def hosts_entries(*names: str, address: str = "127.0.0.1") -> Iterator[None]:
    """Names that resolve to `address` through /etc/hosts while the block runs; only
    the lines added here are removed afterwards (other tests may add their own)."""
    lines = [f"{address} {name} {MARK}" for name in names]
    text = HOSTS.read_text()
    with HOSTS.open("a") as f:
        f.write(("" if text.endswith("\n") or not text else "\n") + "\n".join(lines) + "\n")
    try:
        yield
    finally:
        kept = [line for line in HOSTS.read_text().splitlines() if line not in lines]
        HOSTS.write_text("\n".join(kept) + "\n")


class Listener:
    """Counts TCP connections on one port of 127.0.0.1 (and ::1 when available); every
    connection is closed at once. A refused destination must leave `count` at 0."""

    def __init__(self) -> None:
        self.count = 0
        self.port = 0
        self._servers: list[asyncio.Server] = []

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.count += 1
        writer.close()

    async def start(self) -> None:
        v4 = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = v4.sockets[0].getsockname()[1]
        self._servers.append(v4)
        with contextlib.suppress(OSError):
            self._servers.append(await asyncio.start_server(self._accept, "::1", self.port))

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()


class Redirector:
    """An HTTP server that answers every request with a 302 to `target`, except paths
    under /echo/ (HTTP 500 quoting the path, as some proxies do) and /missing (404)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.hits: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        if request.path.startswith("/echo/"):
            return web.Response(status=500, text=f"no hook at {request.path}")
        if request.path.startswith("/missing"):
            return web.Response(status=404, text="not here")
        raise web.HTTPFound(self.target)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, base = await local_server(app)
        self.port = int(base.rsplit(":", 1)[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
