"""`hub voice` with the guard on: a voice session whose audio URL fails in any way (a
redirect to a refused address, bad audio, a malformed redirect) ends its own deliveries
`failed` with the reason, before anyone is called; the controller keeps running and the
next session is played. Needs the embedded Asterisk (like tests/e2e/test_voice.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import Procs, TestPhones
from tests.helpers import Api, free_port, local_server
from tests.netfakes import Listener, hosts_entries

pytestmark = pytest.mark.e2e
NUMBER = "+97798123456{:02d}"
GUARD_ON = {"HUB_ALLOW_PRIVATE_URLS": "false", "HUB_TRUSTED_HOSTS": "media.test"}


@pytest.fixture
def media_name() -> Iterator[str]:
    with hosts_entries("media.test"):
        yield "media.test"


@pytest.fixture
async def media(listener: Listener, media_name: str) -> AsyncIterator[str]:
    """Audio answers by a trusted name: a redirect into loopback, garbage, a bad Location."""
    async def to_loopback(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{listener.port}/a.wav")

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(body=b"not a wav file at all", content_type="audio/wav")

    async def bad_location(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "http://[::1/a.wav"})

    app = web.Application()
    app.router.add_get("/redirect.wav", to_loopback)
    app.router.add_get("/garbage.wav", garbage)
    app.router.add_get("/bad-location.wav", bad_location)
    runner, base = await local_server(app)
    yield base.replace("127.0.0.1", media_name)
    await runner.cleanup()


@pytest.mark.timeout(150)
async def test_bad_audio_urls_fail_their_session_and_voice_keeps_running(
    phones: TestPhones, procs: Procs, http: aiohttp.ClientSession, make_app: Any,
    media: str, listener: Listener,
) -> None:
    port = free_port()
    procs.api(port, **GUARD_ON)
    api = Api(http, f"http://127.0.0.1:{port}", await make_app("voice-tenant"))
    status, body = await api.post("/v1/transports", {"name": "trunk", "type": "voice", "config": {
        "trunk": "trunk", "callerId": "+9771000000", "maxChannels": 5, "cps": 5,
        "ringTimeoutS": 5}})
    assert status == 201, body
    controller = procs.start("voice", **GUARD_ON)
    for path, why in (("redirect.wav", "not an allowed destination"),
                      ("garbage.wav", "could not be converted"),
                      ("bad-location.wav", "fileUrl could not be fetched")):
        created = await api.submit({"transport": {"type": "voice", "fileUrl": f"{media}/{path}"},
                                    "audience": [NUMBER.format(40)], "options": {"retries": 3}})
        done = await api.wait_status(created["sessionId"], timeout_s=30)
        assert done["counts"] == {"failed": 1}, (path, done)
        [row] = (await api.deliveries(created["sessionId"])).values()
        assert row["attempts"] == 0 and why in row["error"], (path, row)
        assert controller.poll() is None, procs.logs()
    fine = await api.submit({"transport": {"type": "voice", "message": "Still here."},
                             "audience": [NUMBER.format(10)]})
    done = await api.wait_status(fine["sessionId"], timeout_s=40)
    assert done["counts"] == {"delivered": 1}
    assert controller.poll() is None
    assert listener.count == 0
