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
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from hub.observe import metrics

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
MAX_CONNECTIONS = 64  # REST connections at once (Asterisk's http.conf sessionlimit must allow them)


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
    def __init__(self, url: str, user: str, password: str, app: str) -> None:
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

    async def start(self) -> None:
        self._http = self._session(timeout_s=10)
        self._reader = asyncio.create_task(self._read_forever(), name="ari-events")

    def _session(self, timeout_s: float) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(headers=self._headers,
                                     connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
                                     timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def close(self) -> None:
        self._closing = True
        if self._reader:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
        if self._http:
            await self._http.close()

    async def request(self, method: str, path: str, **params: Any) -> Any:
        if self._http is None:  # REST only (e.g. asking another Asterisk about a call)
            self._http = self._session(timeout_s=5)
        body = params.pop("json", None)
        clean = {k: (str(v).lower() if isinstance(v, bool) else v)
                 for k, v in params.items() if v is not None}
        try:
            async with self._http.request(method, self.base + path, params=clean, json=body) as r:
                text = await r.text()
                if r.status >= 400:
                    raise AriError(r.status, text.strip()[:300])
                return json.loads(text) if text else None
        except (aiohttp.ClientConnectorError, ConnectionRefusedError) as exc:
            raise AriError(0, f"{type(exc).__name__}: {exc}", reached=False) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AriError(0, f"{type(exc).__name__}: {exc or 'no answer in time'}") from exc

    async def originate(self, *, endpoint: str, channel_id: str, caller_id: str | None,
                        timeout_s: int, variables: dict[str, str], app_args: str) -> Any:
        """Dial straight into our Stasis app (it enters with `app_args` once answered).
        Originating with `app` subscribes the app to the channel from its creation, so
        its every event (ringing, no answer, its end) reaches us without `subscribeAll`."""
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
            await self.request("DELETE", f"/channels/{channel_id}", reason=reason)
        except AriError as exc:
            if exc.status != 404:  # already gone
                raise

    async def play(self, channel_id: str, media: str, playback_id: str) -> Any:
        return await self.request("POST", f"/channels/{channel_id}/play", media=media,
                                  playbackId=playback_id)

    async def channels(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self.request("GET", "/channels")
        return found

    async def _read_forever(self) -> None:
        assert self._http is not None
        ws_url = self.base.replace("http", "ws", 1) + "/events"
        failures = 0
        while not self._closing:
            try:
                async with self._http.ws_connect(
                    ws_url, params={"app": self.app}, heartbeat=10,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5),
                ) as ws:
                    failures = 0
                    log.info("ARI connected, app %s registered", self.app)
                    await self._filter_events()
                    if self.on_connect:  # e.g. reconcile: done before anyone dials again
                        try:
                            await self.on_connect()
                        except Exception:  # not ready: try the whole connection again
                            log.exception("ARI connected, but getting ready failed")
                            raise OSError("not ready after connecting") from None
                    self.connected.set()
                    metrics.ari_connected(True)
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT and self.on_event:
                            await self._dispatch(msg.data)
                        elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                            break
                log.warning("ARI websocket closed by Asterisk")
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if failures == 0:
                    log.warning("ARI unreachable: %s", exc)
            finally:
                self.connected.clear()
                metrics.ari_connected(False)
            await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
            failures += 1

    async def _filter_events(self) -> None:
        if self.event_types is None:
            return
        try:
            await self.request("PUT", f"/applications/{self.app}/eventFilter", json={
                "allowed": [{"type": kind} for kind in sorted(self.event_types)]})
        except AriError as exc:  # every event comes (and `on_event` passes most over)
            level = logging.INFO if exc.status in (400, 404, 405) else logging.WARNING
            log.log(level, "ARI: Asterisk did not take the event filter of %s (older than"
                    " 16, or not answering); filtering here: %s", self.app, exc)

    async def _dispatch(self, raw: str) -> None:
        assert self.on_event is not None
        try:
            event = json.loads(raw)
        except ValueError:
            log.warning("ARI sent a message that is not JSON: %.200s", raw)
            return
        try:
            await self.on_event(event)
        except Exception:  # one bad event must not stop the reader
            log.exception("handling ARI event %s failed", event.get("type"))
