"""What the voice benches share: the embedded Asterisk instance they use, an ARI observer
timestamping every channel, the hub's API and voice controller as processes, a media
server for the played file, and the SIPp phones with their statistics and RTP counter.

The instance is HUB_BENCH_ASTERISK_INSTANCE (default 1: ARI on 8088, phones on SIP port
5070; instance N: ARI on 8087+N, AMI on 5037+N, phones on 5070+2(N-1)), started with
`scripts/asterisk.sh up` if it is not running and stopped again afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import functools
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.common import DB_URL, ROOT, free_port, fresh_database, new_app_key, spawn, wait_http
from hub.dev.phones import Phones, RtpCounter
from hub.dev.procs import stop_all
from hub.voice.carrier import LIMITS_TTL_S

INSTANCE = int(os.environ.get("HUB_BENCH_ASTERISK_INSTANCE", "1"))
ARI_PORT = 8088 if INSTANCE == 1 else 8087 + INSTANCE
AMI_PORT = 5038 if INSTANCE == 1 else 5037 + INSTANCE
SIP_PORT = 5070 + 2 * (INSTANCE - 1)
ARI = f"http://127.0.0.1:{ARI_PORT}/ari"
ARI_USER = os.environ.get("HUB_ARI_USER", "hub")
ARI_PASSWORD = os.environ.get("HUB_ARI_PASSWORD", "hub")
AUTH = {"Authorization": "Basic " + base64.b64encode(
    f"{ARI_USER}:{ARI_PASSWORD}".encode()).decode()}
MEDIA_DIR_IN_ASTERISK = "/var/lib/asterisk/sounds/hub"


def hub_env() -> dict[str, str]:
    """Settings that point the hub's processes at the bench's Asterisk instance."""
    return {"HUB_ARI_URL": f"http://127.0.0.1:{ARI_PORT}", "HUB_ARI_USER": ARI_USER,
            "HUB_ARI_PASSWORD": ARI_PASSWORD, "HUB_AMI_PORT": str(AMI_PORT),
            "HUB_VOICE_POLL_S": "0.2"}


def number(i: int) -> str:
    return f"+977981{i:06d}0"  # last digit 0: the phone answers and listens


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Observer:
    """Every channel's life as Asterisk reports it (`subscribeAll`): monotonic and wall
    times of creation, answer (Up) and end, and the most channels live / up at once."""

    def __init__(self) -> None:
        self.created: dict[str, float] = {}
        self.up: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.ended_wall: dict[str, float] = {}
        self.live = self.live_up = self.max_live = self.max_up = 0
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self, http: aiohttp.ClientSession) -> None:
        async with http.ws_connect(ARI.replace("http", "ws") + "/events",
                                   params={"app": "bench-observer", "subscribeAll": "true"}) as ws:
            self.ready.set()
            async for msg in ws:
                self.take(json.loads(msg.data))

    def take(self, event: dict[str, Any]) -> None:
        channel = (event.get("channel") or {}).get("id")
        if not channel:
            return
        now, kind = time.monotonic(), event["type"]
        if kind == "ChannelCreated" and channel not in self.created:
            self.created[channel] = now
            self.live += 1
            self.max_live = max(self.max_live, self.live)
        elif (kind == "ChannelStateChange" and event["channel"]["state"] == "Up"
              and channel not in self.up):
            self.up[channel] = now
            self.live_up += 1
            self.max_up = max(self.max_up, self.live_up)
        elif kind == "ChannelDestroyed" and channel not in self.ended:
            self.ended[channel] = now
            self.ended_wall[channel] = time.time()
            self.live -= 1
            if channel in self.up:
                self.live_up -= 1

    async def start(self, http: aiohttp.ClientSession) -> None:
        self._task = asyncio.create_task(self._run(http))
        await asyncio.wait_for(self.ready.wait(), 10)

    def reset(self) -> None:
        for table in (self.created, self.up, self.ended, self.ended_wall):
            table.clear()
        self.max_live, self.max_up = self.live, self.live_up

    def stats(self, prefix: str) -> dict[str, float]:
        """Channels created/s and answered/s (first to last event), setup p50/p99 (created
        → Up, ms), counts; for the channels whose id starts with `prefix`."""
        created = sorted(t for c, t in self.created.items() if c.startswith(prefix))
        up = sorted(t for c, t in self.up.items() if c.startswith(prefix))
        setup = [(self.up[c] - t) * 1000 for c, t in self.created.items()
                 if c.startswith(prefix) and c in self.up]

        def rate(stamps: list[float]) -> float:
            return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0

        return {"created": len(created), "answered": len(up), "createdPerS": rate(created),
                "answeredPerS": rate(up), "setupP50Ms": pct(setup, 0.5),
                "setupP99Ms": pct(setup, 0.99), "maxLive": self.max_live, "maxUp": self.max_up}


class MediaServer:
    """Serves the played files (tones made with sox) over HTTP for the hub's fileUrl."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(Quiet, directory=str(folder)))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def tone(self, seconds: int) -> str:
        path = self.folder / f"tone{seconds}.wav"
        if not path.exists():
            subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", str(path), "synth",
                            str(seconds), "sine", "440", "vol", "0.3"], check=True)
        return f"{self.url}/{path.name}"

    def stop(self) -> None:
        self.server.shutdown()


@contextmanager
def asterisk() -> Iterator[None]:
    """The instance up for the block (left as found: stopped if this started it)."""
    script = str(ROOT / "scripts" / "asterisk.sh")
    run_env = {**os.environ, "HUB_ASTERISK_INSTANCE": str(INSTANCE)}
    was_running = subprocess.call(["bash", script, "status"], env=run_env,
                                  stdout=subprocess.DEVNULL) == 0
    subprocess.run(["bash", script, "up"], check=True, env=run_env)
    try:
        yield
    finally:
        subprocess.run(["bash", script, "hangup-all" if was_running else "down"], env=run_env)


class Hub:
    """The hub's API and voice controller, on a fresh bench database."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[Any] = []
        self.key = ""
        self.transport_id = ""

    async def start(self) -> None:
        await fresh_database()
        self.key = await new_app_key()
        self.transport_id = ""
        self.procs = [spawn("hub.cli.main", "api", HUB_API_PORT=str(self.port), **hub_env()),
                      spawn("hub.cli.main", "voice", **hub_env())]
        wait_http(self.url + "/healthz")

    @property
    def voice_pid(self) -> int:
        pid: int = self.procs[1].pid
        return pid

    def stop(self) -> None:
        stop_all(self.procs)

    async def call(self, http: aiohttp.ClientSession, method: str, path: str,
                   body: Any = None, allowed: tuple[str, ...] = ()) -> Any:
        """The API's answer; an error fails the bench unless its error_id is `allowed`."""
        async with http.request(method, self.url + path, json=body,
                                headers={"Authorization": f"Bearer {self.key}"}) as r:
            data = await r.json()
            assert r.status < 300 or data.get("error_id") in allowed, data
            return data

    async def cancel(self, http: aiohttp.ClientSession, session_id: str) -> None:
        """Cancel a session; one that has already ended (every call done) is fine."""
        await self.call(http, "POST", f"/v1/sessions/{session_id}/cancel",
                        allowed=("cannot-cancel",))

    async def campaign(self, http: aiohttp.ClientSession, numbers: list[str], file_url: str,
                       *, cps: float, channels: int) -> str:
        """A session through the one bench transport, set to `cps` and `channels` first.
        One transport, changed between runs: the carrier's limits of an endpoint are the
        smallest of every transport naming it, so a transport per run would hold every
        later run to the smallest limits of the earlier ones."""
        config = {"trunk": "trunk", "cps": cps, "maxChannels": channels, "ringTimeoutS": 10}
        if not self.transport_id:
            made = await self.call(http, "POST", "/v1/transports",
                                   {"name": "bench", "type": "voice", "config": config})
            self.transport_id = str(made["id"])
        else:
            await self.call(http, "PATCH", f"/v1/transports/{self.transport_id}",
                            {"config": config})
            await asyncio.sleep(LIMITS_TTL_S + 0.5)  # the controller reads limits again
        created = await self.call(http, "POST", "/v1/sessions", {
            "transport": {"type": "voice", "fileUrl": file_url, "extras": {"transport": "bench"}},
            "audience": numbers, "options": {"trigger": "immediate"}})
        return str(created["sessionId"])

    async def wait(self, http: aiohttp.ClientSession, sid: str, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            session = await self.call(http, "GET", f"/v1/sessions/{sid}")
            if session["status"] == "completed":
                return session
            await asyncio.sleep(0.5)
        raise TimeoutError(f"session {sid} did not finish in {timeout_s} s")

    async def media_uri(self, sid: str, timeout_s: float = 60) -> str:
        """The sound the hub prepared for a session, as ARI names it (for the raw loop to
        play the very same file); waits until the controller has prepared it."""
        conn = await asyncpg.connect(DB_URL)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                media = await conn.fetchval("SELECT media FROM sessions WHERE id = $1",
                                            uuid.UUID(sid))
                if isinstance(media, str):
                    media = json.loads(media)
                if media and "name" in media:
                    return f"sound:{MEDIA_DIR_IN_ASTERISK}/{media['name']}"
                if time.monotonic() > deadline:
                    raise TimeoutError(f"session {sid}: no media prepared ({media})")
                await asyncio.sleep(0.2)
        finally:
            await conn.close()

    async def recording_lags_ms(self, sid: str, ended_wall: dict[str, float]) -> list[float]:
        """Per call: from Asterisk's ChannelDestroyed to the attempt recorded in the DB."""
        conn = await asyncpg.connect(DB_URL)
        try:
            rows = await conn.fetch(
                "SELECT a.provider_ref, extract(epoch FROM a.ended_at) AS t FROM attempts a"
                " JOIN deliveries d ON d.id = a.delivery_id WHERE d.session_id = $1"
                " AND a.ended_at IS NOT NULL", uuid.UUID(sid))
        finally:
            await conn.close()
        return [(float(r["t"]) - ended_wall[r["provider_ref"]]) * 1000 for r in rows
                if r["provider_ref"] in ended_wall]


class RawApp:
    """The raw ARI loop's Stasis app: on StasisStart play `media`, on PlaybackFinished
    hang up — the same work the hub does for a plain broadcast call. Like the hub's
    controller, it asks Asterisk for only the events it acts on."""

    def __init__(self, http: aiohttp.ClientSession, media: str, *, hang_up: bool = True) -> None:
        self.http, self.media, self.hang_up = http, media, hang_up
        self.started = self.finished = 0
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with self.http.ws_connect(ARI.replace("http", "ws") + "/events",
                                        params={"app": "bench-raw"}) as ws:
            # Only the events it acts on, as the hub's controller asks for its own. Right
            # after the previous run's websocket closed, Asterisk may not list the app
            # again yet ("Application not found"): asked again shortly.
            for _ in range(50):
                async with self.http.put(ARI + "/applications/bench-raw/eventFilter", json={
                        "allowed": [{"type": "StasisStart"},
                                    {"type": "PlaybackFinished"}]}) as r:
                    if r.status != 404:
                        assert r.status == 200, await r.text()
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("Asterisk never listed the raw app bench-raw")
            self.ready.set()
            async for msg in ws:
                event = json.loads(msg.data)
                if event["type"] == "StasisStart":
                    self.started += 1
                    channel = event["channel"]["id"]
                    asyncio.create_task(self._post(f"/channels/{channel}/play",
                                                   media=self.media, playbackId=f"pb-{channel}"))
                elif event["type"] == "PlaybackFinished":
                    self.finished += 1
                    channel = event["playback"]["target_uri"].removeprefix("channel:")
                    if self.hang_up:
                        asyncio.create_task(self._delete(f"/channels/{channel}"))

    async def _post(self, path: str, **params: str) -> None:
        async with self.http.post(ARI + path, params=params) as r:
            await r.read()

    async def _delete(self, path: str) -> None:
        async with self.http.delete(ARI + path) as r:
            await r.read()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 10)

    def stop(self) -> None:
        if self._task:
            self._task.cancel()


async def originate_raw(http: aiohttp.ClientSession, numbers: list[str], in_flight: int,
                       cps: float | None = None, prefix: str = "raw-") -> int:
    """Originate every number into the raw app with `in_flight` requests outstanding at
    most, call i not before i/cps seconds from the start (as fast as ARI answers when
    `cps` is None); returns how many originates failed."""
    queue = list(reversed(numbers))
    failed = 0
    start = time.monotonic()
    issued = 0

    async def worker() -> None:
        nonlocal failed, issued
        while queue:
            to = queue.pop()
            if cps:
                due = start + issued / cps
                issued += 1
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
            async with http.post(f"{ARI}/channels", params={
                    "endpoint": f"PJSIP/{to}@trunk", "app": "bench-raw",
                    "channelId": f"{prefix}{uuid.uuid4()}", "timeout": "10"}) as r:
                await r.read()
                failed += r.status != 200

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return failed


@asynccontextmanager
async def phones(workdir: Path, stats_file: Path | None = None) -> AsyncIterator[RtpCounter]:
    """SIPp phones (with `-trace_stat` into `stats_file` when given) whose audio comes to
    an RTP counter: what the phones actually heard."""
    counter = RtpCounter()
    await counter.start()
    sipp = Phones(workdir, counter.port, sip_port=SIP_PORT)
    sipp.start(stats_file=stats_file)
    try:
        yield counter
    finally:
        sipp.stop()
        counter.stop()


def sipp_stats(stats_file: Path) -> dict[str, int]:
    """SIPp's own counters from its -trace_stat CSV: the most calls up at once, and the
    successful and failed calls in total (its last line)."""
    if not stats_file.exists():
        return {"maxCurrentCalls": 0, "successful": 0, "failed": 0}
    rows = list(csv.DictReader(stats_file.read_text().splitlines(), delimiter=";"))
    if not rows:
        return {"maxCurrentCalls": 0, "successful": 0, "failed": 0}
    return {"maxCurrentCalls": max(int(r.get("CurrentCall", 0) or 0) for r in rows),
            "successful": int(rows[-1].get("SuccessfulCall(C)", 0) or 0),
            "failed": int(rows[-1].get("FailedCall(C)", 0) or 0)}
