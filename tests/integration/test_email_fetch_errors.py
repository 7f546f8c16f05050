"""Opening an email sender whose attachment cannot be fetched raises `FetchError`, flagged
transient when a later try may succeed, and never shows the URL's credentials."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from hub.config import Settings
from hub.net import FetchError
from hub.transports.email import EMAIL
from tests.helpers import free_port, local_server

SMTP = {"host": "127.0.0.1", "port": 2525, "from": "hub@example.com"}


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["status"]), text="x")

    app = web.Application()
    app.router.add_get("/{status}/file.pdf", answer)
    runner, base = await local_server(app)
    yield base.replace("http://", "http://user:hunter2-secret@")
    await runner.cleanup()


def content(url: str) -> dict[str, Any]:
    return {"type": "email", "subject": "S", "message": "M",
            "extras": {"attachments": [{"url": url}]}}


async def open_error(url: str, settings: Settings) -> FetchError:
    with pytest.raises(FetchError) as caught:
        async with EMAIL.open(SMTP, content(url), settings, "t"):
            pass
    assert "hunter2" not in str(caught.value) and "tok3n" not in str(caught.value)
    return caught.value


@pytest.mark.parametrize(("status", "transient"), [
    (503, True), (500, True), (429, True), (408, True), (404, False), (403, False)])
async def test_http_status_decides_transient(
    server: str, settings: Settings, status: int, transient: bool
) -> None:
    err = await open_error(f"{server}/{status}/file.pdf?sig=tok3n", settings)
    assert err.transient is transient
    assert f"HTTP {status}" in str(err) and "attachment 1" in str(err)


async def test_connection_refused_is_transient(settings: Settings) -> None:
    url = f"http://user:hunter2-secret@127.0.0.1:{free_port()}/file.pdf?sig=tok3n"
    assert (await open_error(url, settings)).transient


async def test_private_address_refused_is_permanent(settings: Settings) -> None:
    strict = settings.model_copy(update={"allow_private_urls": False})
    url = "http://user:hunter2-secret@127.0.0.1:9/file.pdf?sig=tok3n"
    assert not (await open_error(url, strict)).transient
