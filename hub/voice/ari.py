"""A thin asyncio ARI client on aiohttp: REST calls and one websocket reader that
reconnects with backoff. It hears only the channels of its own app: every call is
originated with `app`, which subscribes the app to the channel from its creation (a call
that is never answered still reports its end). Not `subscribeAll`: that makes Asterisk
serialise, and the controller parse, every event of every channel on the host (its
dialplan steps, other apps' calls), which cost a third of the calls per second the
controller could place on a busy host.

Why our own: `ari-py` is Python 2 only, `py3ari` fails to import, and `aioari`,
`asyncari` and `ari-client` neither reconnect nor survive Asterisk closing the
websocket (ari-client spins in an error loop). What the hub needs is small: a handful of
REST calls, events routed by channel id, and a reconnect after which the controller
rebuilds its state from `GET /ari/channels`.

REST over websockets: Asterisk 20.14, 21.9, 22.4 and later also take REST requests on an
events websocket (`RESTRequest` in, `RESTResponse` out), about a third of the
controller's CPU for an HTTP request (0.08 ms against 0.22 here). Asterisk carries out a
websocket's requests one after the other, in that websocket's one thread, so only those
it answers at once go that way (`websocket=True`: a call's play and hang-up, two of its
three requests); a request that waits in Asterisk (setting a variable while a playback
runs: seconds) or answers with much (`GET /channels`) would hold up the others. And not
on the events websocket, nor on one alone: on a busy host one thread serving every
call's requests (and writing every event) fell behind, plays started 0.1-1.8 s after the
answer and every call lived that much longer, which cost Asterisk more CPU than the
websocket saved the controller. So REST_SOCKETS websockets of their own (apps
`<app>-rest-N`, which no channel is subscribed to) carry them in turn. Each is used once
Asterisk has answered a probe sent on it at each connection; while none is, and with an
older Asterisk, requests go over HTTP as the rest.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from hub.observe import metrics
from hub.voice.coalesce import coalesce_writes, writable

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
MAX_CONNECTIONS = 64  # REST connections at once (Asterisk's http.conf sessionlimit must allow them)
REQUEST_TIMEOUT_S = 10.0
PROBE_ID = "hub-probe"  # the request that asks whether Asterisk takes REST on the websocket
REST_RESPONSE = "RESTResponse"
REST_SOCKETS = 4  # websockets carrying REST requests (Asterisk serves each one's in turn)


class AriError(Exception):
    """ARI answered with an error status, or could not be reached.

    `status` 0: no answer. Then `reached` says whether the request may have reached
    Asterisk (a time-out, a dropped connection) or surely did not (connection refused).
    """

    def __init__(self, status: int, message: str, *, reached: bool = True) -> None:
        super().__init__(f"ARI {status}: {message}")
        self.status = status
        self.reached = reached


class Ari:
    def __init__(self, url: str, user: str, password: str, app: str, *,
                 rest_over_websocket: bool = True, rest_sockets: int = REST_SOCKETS) -> None:
        self.base = url.rstrip("/") + "/ari"
        self.app = app
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}
        self._http: aiohttp.ClientSession | None = None
        self._reader: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.on_event: EventHandler | None = None
        self.on_connect: Hook | None = None
        # The event types the app handles (None: all). Asked of Asterisk at every
        # connection (`PUT /applications/{app}/eventFilter`): a call raises some twenty
        # events, most of them (Dial, ChannelDialplan, PlaybackStarted, ...) of no use
        # to the hub, and each costs Asterisk its JSON and the controller its parsing.
        # An Asterisk that does not filter sends them all; `on_event` passes them over.
        self.event_types: frozenset[str] | None = None
        self._closing = False
        self.connections = 0  # websocket connections so far: the current one's number
        self.rest_sockets = rest_sockets if rest_over_websocket else 0
        self._rest: list[aiohttp.ClientWebSocketResponse] = []  # those that answered a probe
        self._rest_loops: list[asyncio.Task[None]] = []
        self._pending: dict[str, tuple[asyncio.Future[tuple[int, str]],
                                       aiohttp.ClientWebSocketResponse]] = {}
        self._ids = itertools.count(1)
        self._turn = itertools.count()

    @property
    def rest_transport(self) -> str:
        """Where REST requests asked with `websocket=True` go now: "websocket" or "http"."""
        return "websocket" if self._rest else "http"

    async def start(self) -> None:
        self._http = self._session(timeout_s=REQUEST_TIMEOUT_S)
        self._reader = asyncio.create_task(self._read_forever(), name="ari-events")
        self._rest_loops = [asyncio.create_task(self._rest_forever(n), name=f"ari-rest-{n}")
                            for n in range(1, self.rest_sockets + 1)]

    def _session(self, timeout_s: float) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(headers=self._headers,
                                     connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
                                     timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def close(self) -> None:
        self._closing = True
        tasks = [*self._rest_loops, *([self._reader] if self._reader else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http:
            await self._http.close()

    async def request(self, method: str, path: str, *, websocket: bool = False,
                      **params: Any) -> Any:
        """The answer to one REST request (query parameters as keywords, a JSON body as
        `json`); `websocket`: on a REST websocket when Asterisk takes them (only for
        requests Asterisk answers at once, see the module's note)."""
        body = params.pop("json", None)
        clean = {k: (str(v).lower() if isinstance(v, bool) else str(v))
                 for k, v in params.items() if v is not None}
        if self._rest and websocket:
            sent = await self._ws_request(self._rest_socket(), method, path, clean, body)
            if sent is not None:
                return _answer(*sent)
        return _answer(*await self._http_request(method, path, clean, body))

    def _rest_socket(self) -> aiohttp.ClientWebSocketResponse:
        """The REST websockets take turns request by request. (By pass of the event loop,
        a burst's requests one write on one websocket, the controller spent a little less,
        but a burst then waited in one Asterisk thread: plays answered p90 462 ms after
        they were sent at 500 calls/s, against 173 ms request by request.)"""
        return self._rest[next(self._turn) % len(self._rest)]

    async def _http_request(self, method: str, path: str, params: dict[str, str],
                            body: Any) -> tuple[int, str]:
        if self._http is None:  # REST only (e.g. asking another Asterisk about a call)
            self._http = self._session(timeout_s=5)
        try:
            async with self._http.request(method, self.base + path, params=params,
                                          json=body) as r:
                return r.status, await r.text()
        except (aiohttp.ClientConnectorError, ConnectionRefusedError) as exc:
            raise AriError(0, f"{type(exc).__name__}: {exc}", reached=False) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AriError(0, f"{type(exc).__name__}: {exc or 'no answer in time'}") from exc

    async def _ws_request(self, ws: aiohttp.ClientWebSocketResponse, method: str, path: str,
                          params: dict[str, str], body: Any) -> tuple[int, str] | None:
        """The answer over the websocket; None when the request cannot be sent there (the
        websocket is closing): it surely does not reach Asterisk, and goes over HTTP. Once
        written, whatever fails (the send, no answer in time, the websocket closing) may
        have reached Asterisk: AriError(0), never sent again over HTTP."""
        if not writable(ws):
            return None
        request_id = str(next(self._ids))
        answer: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (answer, ws)  # before sending: it may be answered at once
        try:
            await ws.send_str(_rest_request(request_id, method, path, params, body))
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return await answer
        except TimeoutError:
            raise AriError(0, "no answer in time on the websocket") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise AriError(0, f"the websocket failed after the request was written: {exc}"
                           ) from exc
        finally:
            if answer.done() and not answer.cancelled():
                answer.exception()  # retrieved: failed by `_lost` while the send raised
            self._pending.pop(request_id, None)

    async def originate(self, *, endpoint: str, channel_id: str, caller_id: str | None,
                        timeout_s: int, variables: dict[str, str], app_args: str) -> Any:
        """Dial straight into our Stasis app (it enters with `app_args` once answered).
        Originating with `app` subscribes the app to the channel from its creation, so
        its every event (ringing, no answer, its end) reaches us without `subscribeAll`.

        Over HTTP, never the websocket: whether a call was placed must be known exactly,
        and a refused connection proves the originate never reached Asterisk, while a
        websocket that closes with the request unanswered (Asterisk stopping) proves
        nothing; such a call would be counted as tried though nobody was dialled."""
        return await self.request(
            "POST", "/channels", json={"variables": variables}, endpoint=endpoint,
            channelId=channel_id, callerId=caller_id, timeout=timeout_s, app=self.app,
            appArgs=app_args)

    async def continue_in_dialplan(self, channel_id: str, context: str) -> None:
        """Send a channel from Stasis into a dialplan context (extension `s`); it stays
        subscribed to the app, and comes back through the context's own Stasis()."""
        await self.request("POST", f"/channels/{channel_id}/continue", context=context,
                           extension="s", priority=1)

    async def hangup(self, channel_id: str, reason: str = "normal") -> None:
        try:
            await self.request("DELETE", f"/channels/{channel_id}", websocket=True,
                               reason=reason)
        except AriError as exc:
            if exc.status != 404:  # already gone
                raise

    async def play(self, channel_id: str, media: str, playback_id: str) -> Any:
        return await self.request("POST", f"/channels/{channel_id}/play", websocket=True,
                                  media=media, playbackId=playback_id)

    async def channels(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self.request("GET", "/channels")
        return found

    def _connect(self, app: str) -> Any:
        """The events websocket of `app` (to be entered with `async with`)."""
        assert self._http is not None
        return self._http.ws_connect(self.base.replace("http", "ws", 1) + "/events",
                                     params={"app": app}, heartbeat=10,
                                     timeout=aiohttp.ClientWSTimeout(ws_close=5))

    @staticmethod
    async def _texts(ws: aiohttp.ClientWebSocketResponse) -> AsyncIterator[str]:
        """The websocket's text messages until it closes or fails."""
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                yield msg.data
            elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                return

    async def _read_forever(self) -> None:
        failures = 0
        while not self._closing:
            try:
                async with self._connect(self.app) as ws:
                    failures = 0
                    self.connections += 1
                    log.info("ARI connected, app %s registered", self.app)
                    await self.filter_events()
                    if self.on_connect:  # e.g. reconcile: done before anyone dials again
                        try:
                            await self.on_connect()
                        except Exception:  # not ready: try the whole connection again
                            log.exception("ARI connected, but getting ready failed")
                            raise OSError("not ready after connecting") from None
                    self.connected.set()
                    metrics.ari_connected(True)
                    async for text in self._texts(ws):
                        await self._dispatch(text)
                log.warning("ARI websocket closed by Asterisk")
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if failures == 0:
                    log.warning("ARI unreachable: %s", exc)
            finally:
                self.connected.clear()
                metrics.ari_connected(False)
            await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
            failures += 1

    async def _rest_forever(self, number: int) -> None:
        """One websocket for REST requests, connected again and again like the events'
        one; used once Asterisk has answered its probe, until it closes."""
        failures = 0
        while not self._closing:
            try:
                async with self._connect(f"{self.app}-rest-{number}") as ws:
                    failures = 0
                    coalesce_writes(ws)  # a burst of events' plays and hang-ups: one write
                    await ws.send_str(_rest_request(PROBE_ID, "GET", "/asterisk/info",
                                                    {"only": "status"}, None))
                    try:
                        async for text in self._texts(ws):
                            self._answered(text, ws)
                    finally:
                        self._lost(ws)
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass  # the events websocket's reader logs Asterisk's absence
            await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
            failures += 1

    def _lost(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """A REST websocket closed: no more requests on it, and those sent on it that
        have no answer may have reached Asterisk."""
        if ws in self._rest:
            self._rest.remove(ws)
        for answer, sent_on in self._pending.values():
            if sent_on is ws and not answer.done():
                answer.set_exception(AriError(0, "the ARI websocket closed"))

    async def filter_events(self, kinds: frozenset[str] | None = None, *,
                            connection: int | None = None) -> None:
        """Ask Asterisk for only these event kinds (default `event_types`, asked at every
        connection) on the current connection; nothing if that is no longer `connection`
        (the next one asks for `event_types` again)."""
        kinds = kinds or self.event_types
        if kinds is None or connection not in (None, self.connections):
            return
        try:
            allowed = sorted(kinds)
            await self.request("PUT", f"/applications/{self.app}/eventFilter", json={
                "allowed": [{"type": kind} for kind in allowed]})
        except AriError as exc:  # every event comes (and `on_event` passes most over)
            level = logging.INFO if exc.status in (400, 404, 405) else logging.WARNING
            log.log(level, "ARI: Asterisk did not take the event filter of %s (older than"
                    " 16, or not answering); filtering here: %s", self.app, exc)

    async def _dispatch(self, raw: str) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            log.warning("ARI sent a message that is not JSON: %.200s", raw)
            return
        if self.on_event is None:
            return
        try:
            await self.on_event(event)
        except Exception:  # one bad event must not stop the reader
            log.exception("handling ARI event %s failed", event.get("type"))

    def _answered(self, raw: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            response = json.loads(raw)
        except ValueError:
            log.warning("ARI sent a message that is not JSON: %.200s", raw)
            return
        if not isinstance(response, dict) or response.get("type") != REST_RESPONSE:
            return  # e.g. an application event: nothing to answer
        request_id = str(response.get("request_id", ""))
        if request_id == PROBE_ID:
            if ws not in self._rest:
                if not self._rest:
                    log.info("ARI: Asterisk takes REST requests on websockets; using them")
                self._rest.append(ws)
            return
        answer, _ = self._pending.get(request_id, (None, None))
        if answer is None or answer.done():
            return
        try:
            status = int(response.get("status_code") or 0)
        except (TypeError, ValueError):
            status = 0
        if status == 0:
            answer.set_exception(AriError(0, f"an answer without a status: {raw:.200}"))
        else:
            answer.set_result((status, str(response.get("message_body") or "")))


def _rest_request(request_id: str, method: str, path: str, params: dict[str, str],
                  body: Any) -> str:
    """A REST request as Asterisk takes it on the websocket (no URL encoding: each query
    parameter is sent as a name and a value)."""
    message: dict[str, Any] = {"type": "RESTRequest", "request_id": request_id,
                               "method": method, "uri": path.lstrip("/")}
    if params:
        message["query_strings"] = [{"name": k, "value": v} for k, v in params.items()]
    if body is not None:
        message["content_type"] = "application/json"
        message["message_body"] = json.dumps(body)
    return json.dumps(message)


def _answer(status: int, text: str) -> Any:
    if status >= 400:
        raise AriError(status, text.strip()[:300])
    return json.loads(text) if text else None
