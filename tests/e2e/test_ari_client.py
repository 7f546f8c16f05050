"""The ARI client's REST requests on websockets (Asterisk 20.14/21.9/22.4 and later; only
those asked with `websocket=True`, the controller's plays and hang-ups, on REST
websockets of their own), against the real Asterisk; and, against a stand-in for an
Asterisk that does not take them, drops a websocket mid-request or answers without a
status, that requests still get their answer over HTTP or fail as "may have reached
Asterisk"."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hub.config import Settings
from hub.voice.ari import REST_SOCKETS, Ari, AriError
from hub.voice.flow import CallFlow
from hub.voice.menu import Menu, enter
from tests.conftest import ARI_URL, TestPhones
from tests.helpers import eventually, local_server
from tests.integration.test_menu_flow import MENU, _call

pytestmark = pytest.mark.e2e
APP = "ari-client-test"


async def _connected(ari: Ari, transport: str) -> Ari:
    async def there() -> bool:
        return ari.connected.is_set() and ari.rest_transport == transport
    await eventually(there, 10, f"REST over {transport}")
    return ari


@pytest.fixture
async def real(asterisk: None, settings: Settings) -> AsyncIterator[Ari]:
    ari = Ari(ARI_URL, settings.ari_user, settings.ari_password, APP)
    ari.event_types = frozenset({"StasisStart"})
    await ari.start()
    yield await _connected(ari, "websocket")
    await ari.close()


async def test_requests_go_on_the_websocket_and_answer_as_over_http(
        real: Ari, settings: Settings, phones: TestPhones) -> None:
    info = await real.request("GET", "/asterisk/info", websocket=True, only="status")
    assert set(info) == {"status"}
    with pytest.raises(AriError) as missing:
        await real.request("GET", "/channels/no-such-channel", websocket=True)
    assert missing.value.status == 404 and "Channel not found" in str(missing.value)
    # A JSON body, and query parameters that would need encoding over HTTP (+, space).
    await real.request("PUT", f"/applications/{APP}/eventFilter", websocket=True,
                       json={"allowed": [{"type": "StasisStart"}, {"type": "RESTResponse"}],
                             "disallowed": [{"type": "ChannelVarset"}]})
    token = base64.b64encode(f"{settings.ari_user}:{settings.ari_password}".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"}) as http:
        async with http.get(f"{ARI_URL}/ari/applications/{APP}") as resp:  # seen over HTTP
            assert [e["type"] for e in (await resp.json())["events_disallowed"]] == [
                "ChannelVarset"]
    created = await real.originate(endpoint="PJSIP/+9779812345610@trunk", channel_id="ws-1",
                                   caller_id=None, timeout_s=5, variables={},
                                   app_args="outbound")  # originates go over HTTP
    assert created["id"] == "ws-1"
    assert await real.request("POST", "/asterisk/variable", websocket=True,
                              variable="HUB_WS_X", value="a b+c&d=e") is None
    got = await real.request("GET", "/asterisk/variable", websocket=True, variable="HUB_WS_X")
    assert got["value"] == "a b+c&d=e"
    await real.hangup("ws-1")  # on the websocket

    async def gone() -> bool:  # the hang-up completes a moment after its answer
        try:
            await real.request("GET", "/channels/ws-1", websocket=True)
        except AriError as exc:
            return exc.status == 404
        return False
    await eventually(gone, 5, "the channel hung up")
    assert real.rest_transport == "websocket"


class StandIn:
    """An ARI stand-in: every HTTP request answers {"via": "http"}; on the websocket it
    ignores RESTRequests (`answers` False, an older Asterisk) or answers them {"via":
    "websocket"}, except that a request for `channels/drop` closes the websocket."""

    def __init__(self, answers: bool) -> None:
        self.answers = answers
        self.over_http: list[str] = []
        self.over_websocket: list[str] = []
        self.apps: list[str] = []  # the app of the websocket each request came on
        self.app = web.Application()
        self.app.router.add_get("/ari/events", self.events)
        self.app.router.add_route("*", "/ari/{tail:.*}", self.rest)

    async def rest(self, request: web.Request) -> web.Response:
        self.over_http.append(f"{request.method} {request.path.removeprefix('/ari/')}")
        return web.json_response({"via": "http", "path": request.path})

    async def events(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            req = json.loads(msg.data)
            if not self.answers:
                continue
            self.over_websocket.append(f"{req['method']} {req['uri']}")
            self.apps.append(request.query["app"])
            if req["uri"] == "channels/drop":
                await ws.close()
                break
            if req["uri"] == "channels/garbled":  # an answer without a status
                await ws.send_str(json.dumps({"type": "RESTResponse",
                                              "request_id": req["request_id"]}))
                continue
            await ws.send_str(json.dumps({
                "type": "RESTResponse", "request_id": req["request_id"], "status_code": 200,
                "message_body": json.dumps({"via": "websocket", "uri": req["uri"]})}))
        return ws


async def _stand_in(answers: bool, **options: Any) -> tuple[web.AppRunner, Ari, StandIn]:
    stand_in = StandIn(answers)
    runner, base = await local_server(stand_in.app)
    ari = Ari(base, "hub", "pw", APP, **options)
    ari.on_event = _ignore
    await ari.start()
    return runner, ari, stand_in


async def _ignore(event: dict[str, Any]) -> None:
    return None


async def test_an_asterisk_that_does_not_take_rest_on_the_websocket_is_asked_over_http() -> None:
    runner, ari, _ = await _stand_in(answers=False)
    try:
        await eventually(lambda: _true(ari.connected.is_set()), 10, "connected")
        await asyncio.sleep(0.5)  # the probe went unanswered
        assert ari.rest_transport == "http"
        assert (await ari.request("GET", "/asterisk/info", websocket=True))["via"] == "http"
    finally:
        await ari.close()
        await runner.cleanup()


async def test_a_request_in_flight_when_the_websocket_drops_may_have_reached_asterisk() -> None:
    runner, ari, _ = await _stand_in(answers=True, rest_sockets=1)
    try:
        await _connected(ari, "websocket")
        assert (await ari.request("GET", "/channels/x", websocket=True))["via"] == "websocket"
        # Requests not asked to go there (they may wait in Asterisk) go over HTTP.
        assert (await ari.request("GET", "/channels/x"))["via"] == "http"
        with pytest.raises(AriError) as dropped:
            await ari.hangup("drop")
        assert dropped.value.status == 0 and dropped.value.reached
        # Until the websocket is back and has answered again, requests go over HTTP.
        assert ari.rest_transport == "http"
        assert (await ari.request("GET", "/channels/x", websocket=True))["via"] == "http"
        await _connected(ari, "websocket")
        assert (await ari.request("GET", "/channels/x", websocket=True))["via"] == "websocket"
    finally:
        await ari.close()
        await runner.cleanup()


async def test_only_plays_and_hangups_go_on_the_websocket() -> None:
    """Asterisk carries out a websocket's requests one after the other: a menu step's
    variable (which waits while a playback runs) goes over HTTP, or every call's plays
    and hang-ups would wait behind it."""
    runner, ari, stand_in = await _stand_in(answers=True)
    try:
        await _connected(ari, "websocket")
        menu = Menu.model_validate(MENU)
        call = _call(menu)
        flow = CallFlow(ari, None)  # no opt-out here: no database needed
        await flow._step(call, enter(menu))  # remembers the step, plays the prompt
        await flow.hangup(call)
        await ari.originate(endpoint="PJSIP/1@trunk", channel_id="hub-y", caller_id=None,
                            timeout_s=5, variables={}, app_args="outbound")
        probe = "GET asterisk/info"
        assert stand_in.over_websocket.count(probe) == REST_SOCKETS  # one per websocket
        assert [r for r in stand_in.over_websocket if r != probe] == [
            "POST channels/hub-x/play", "DELETE channels/hub-x"]
        assert stand_in.over_http == ["POST channels/hub-x/variable", "POST channels"]
    finally:
        await ari.close()
        await runner.cleanup()


async def test_requests_take_turns_on_websockets_of_their_own() -> None:
    """Asterisk serves each websocket's requests in one thread, one after the other: they
    go on REST_SOCKETS websockets in turn, none on the events websocket, and when one
    closes the others carry on (its request in flight failing as "may have reached")."""
    runner, ari, stand_in = await _stand_in(answers=True)
    try:
        await eventually(lambda: _true(len(ari._rest) == REST_SOCKETS), 10, "all connected")
        stand_in.apps.clear()
        for _ in range(2 * REST_SOCKETS):
            assert (await ari.request("GET", "/channels/x", websocket=True))["via"] == "websocket"
        rest_apps = [f"{APP}-rest-{n}" for n in range(1, REST_SOCKETS + 1)]
        assert sorted(stand_in.apps) == sorted(rest_apps * 2)
        stand_in.apps.clear()  # sent at once, they are spread too: no burst in one thread
        await asyncio.gather(*(ari.request("GET", f"/channels/{n}", websocket=True)
                               for n in range(REST_SOCKETS)))
        assert sorted(stand_in.apps) == sorted(rest_apps)
        with pytest.raises(AriError) as dropped:
            await ari.hangup("drop")
        assert dropped.value.status == 0 and dropped.value.reached
        assert len(ari._rest) == REST_SOCKETS - 1
        with pytest.raises(AriError) as garbled:  # it may have been carried out: not resent
            await ari.request("GET", "/channels/garbled", websocket=True)
        assert garbled.value.status == 0 and garbled.value.reached
        assert "GET channels/garbled" not in stand_in.over_http
        assert (await ari.request("GET", "/channels/x", websocket=True))["via"] == "websocket"
        await eventually(lambda: _true(len(ari._rest) == REST_SOCKETS), 10, "reconnected")
    finally:
        await ari.close()
        await runner.cleanup()


async def _true(value: bool) -> bool:
    return value
