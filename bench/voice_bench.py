"""bench/voice: the hub's voice path against the embedded Asterisk and SIPp, one run.

(a) call setup rate: hub-paced originations/s vs a raw ARI originate loop at the same
    target rate (ratio, target >= 0.9);
(b) simultaneous answered calls with playback the hub holds with zero failed setups
    (target >= 300);
(c) pacing accuracy: configured CPS vs achieved (within 5 %), channel cap never exceeded;
(d) controller RSS with 10,000 queued calls (target <= 200 MB).

An observer on the ARI websocket (`subscribeAll`) timestamps every channel's creation,
answer and end, for the raw loop and the hub alike.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import ROOT, env, free_port, fresh_database, new_app_key, rss_mb, wait_http
from hub.dev.phones import Phones
from hub.dev.procs import stop_all

ARI = "http://127.0.0.1:8088/ari"
AUTH = {"Authorization": "Basic " + base64.b64encode(
    f"{os.environ.get('HUB_ARI_USER', 'hub')}:{os.environ.get('HUB_ARI_PASSWORD', 'hub')}".encode()
).decode()}
RATE_CPS = 50
SETUP_CALLS = 200
HOLD_CALLS = int(os.environ.get("HUB_BENCH_HOLD_CALLS", "320"))
QUEUED_CALLS = 10_000


class Observer:
    """Every channel's life as Asterisk reports it."""

    def __init__(self) -> None:
        self.created: dict[str, float] = {}
        self.up: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.live = 0
        self.max_live = 0
        self.live_up = 0
        self.max_up = 0
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def run(self, http: aiohttp.ClientSession) -> None:
        async with http.ws_connect(ARI.replace("http", "ws") + "/events",
                                   params={"app": "bench-observer", "subscribeAll": "true"}) as ws:
            self.ready.set()
            async for msg in ws:
                event = json.loads(msg.data)
                channel = (event.get("channel") or {}).get("id")
                if not channel:
                    continue
                now = time.monotonic()
                kind = event["type"]
                if kind == "ChannelCreated" and channel not in self.created:
                    self.created[channel] = now
                    self.live += 1
                    self.max_live = max(self.max_live, self.live)
                elif kind == "ChannelStateChange" and event["channel"]["state"] == "Up" \
                        and channel not in self.up:
                    self.up[channel] = now
                    self.live_up += 1
                    self.max_up = max(self.max_up, self.live_up)
                elif kind == "ChannelDestroyed" and channel not in self.ended:
                    self.ended[channel] = now
                    self.live -= 1
                    if channel in self.up:
                        self.live_up -= 1

    def start(self, http: aiohttp.ClientSession) -> None:
        self._task = asyncio.create_task(self.run(http))

    def rate(self, prefix: str) -> float:
        stamps = sorted(t for c, t in self.created.items() if c.startswith(prefix))
        return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0

    def reset(self) -> None:
        self.created.clear(), self.up.clear(), self.ended.clear()
        self.max_live = self.live
        self.max_up = self.live_up


def number(i: int) -> str:
    return f"+977981{i:06d}0"  # last digit 0: the phone answers and listens


async def raw_loop(http: aiohttp.ClientSession, obs: Observer) -> tuple[float, int]:
    """Baseline: originate SETUP_CALLS into a Stasis app of our own at RATE_CPS, hang up
    each as soon as it is answered."""
    answered = 0

    async def app_events() -> None:
        nonlocal answered
        async with http.ws_connect(ARI.replace("http", "ws") + "/events",
                                   params={"app": "bench-raw"}) as ws:
            ready.set()
            async for msg in ws:
                event = json.loads(msg.data)
                if event["type"] == "StasisStart":
                    answered += 1
                    await http.delete(f"{ARI}/channels/{event['channel']['id']}")

    ready = asyncio.Event()
    task = asyncio.create_task(app_events())
    await ready.wait()
    start = time.monotonic()
    for i in range(SETUP_CALLS):
        target = start + i / RATE_CPS
        await asyncio.sleep(max(0.0, target - time.monotonic()))
        async with http.post(f"{ARI}/channels", params={
                "endpoint": f"PJSIP/{number(i)}@trunk", "app": "bench-raw",
                "channelId": f"raw-{uuid.uuid4()}", "timeout": "10"}) as r:
            await r.read()
    deadline = time.monotonic() + 30
    while answered < SETUP_CALLS and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    task.cancel()
    return obs.rate("raw-"), answered


class Hub:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.key = ""

    async def start(self) -> None:
        await fresh_database()
        self.key = await new_app_key()
        for args in (["api"], ["voice"]):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "hub.cli.main", *args], cwd=ROOT,
                env=env(HUB_API_PORT=str(self.port), HUB_VOICE_POLL_S="0.2"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_http(self.url + "/healthz")

    @property
    def voice_pid(self) -> int:
        return self.procs[1].pid

    def stop(self) -> None:
        stop_all(self.procs)

    async def call(self, http: aiohttp.ClientSession, method: str, path: str,
                   body: Any = None) -> Any:
        async with http.request(method, self.url + path, json=body,
                                headers={"Authorization": f"Bearer {self.key}"}) as r:
            data = await r.json()
            assert r.status < 300, data
            return data

    async def campaign(self, http: aiohttp.ClientSession, name: str, numbers: list[str],
                       file_url: str, *, cps: float, channels: int) -> str:
        transport = await self.call(http, "POST", "/v1/transports", {
            "name": name, "type": "voice", "config": {
                "trunk": "trunk", "cps": cps, "maxChannels": channels, "ringTimeoutS": 10}})
        created = await self.call(http, "POST", "/v1/sessions", {
            "transport": {"type": "voice", "fileUrl": file_url,
                          "extras": {"transport": transport["name"]}},
            "audience": numbers})
        return str(created["sessionId"])

    async def wait(self, http: aiohttp.ClientSession, sid: str, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            session = await self.call(http, "GET", f"/v1/sessions/{sid}")
            if session["status"] == "completed":
                return session
            await asyncio.sleep(0.5)
        raise TimeoutError(f"session {sid} did not finish in {timeout_s} s")


def tone(folder: Path, seconds: int) -> Path:
    path = folder / f"tone{seconds}.wav"
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", str(path), "synth", str(seconds),
                    "sine", "440", "vol", "0.3"], check=True)
    return path


async def main() -> dict[str, float]:
    script = str(ROOT / "scripts" / "asterisk.sh")
    was_running = subprocess.call(["bash", script, "status"]) == 0
    subprocess.run(["bash", script, "up"], check=True)
    work = Path(tempfile.mkdtemp(prefix="hub-bench-voice-"))
    for seconds in (1, 2, 40):
        tone(work, seconds)
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(work)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    media = f"http://127.0.0.1:{server.server_address[1]}"
    phones = Phones(work, free_port())
    phones.start()
    hub = Hub()
    results: dict[str, float] = {}
    try:
        await hub.start()
        async with aiohttp.ClientSession(headers=AUTH) as ari_http, aiohttp.ClientSession() as http:
            obs = Observer()
            obs.start(ari_http)
            await obs.ready.wait()

            raw_rate, raw_answered = await raw_loop(ari_http, obs)
            await asyncio.sleep(2)
            obs.reset()
            sid = await hub.campaign(http, "setup", [number(i) for i in range(SETUP_CALLS)],
                                     f"{media}/tone1.wav", cps=RATE_CPS, channels=1000)
            done = await hub.wait(http, sid, 120)
            hub_rate = obs.rate("hub-")
            print(f"(a) call setup at {RATE_CPS} cps target, {SETUP_CALLS} calls: raw ARI loop "
                  f"{raw_rate:.1f} calls/s ({raw_answered} answered), hub {hub_rate:.1f} calls/s "
                  f"({done['counts']}); ratio {hub_rate / raw_rate:.3f} (target >= 0.9)")
            error = abs(hub_rate - RATE_CPS) / RATE_CPS

            obs.reset()
            cap = 20
            sid = await hub.campaign(http, "capped", [number(10_000 + i) for i in range(100)],
                                     f"{media}/tone2.wav", cps=RATE_CPS, channels=cap)
            await hub.wait(http, sid, 120)
            capped_max = obs.max_live
            print(f"(c) pacing: configured {RATE_CPS} cps, achieved {hub_rate:.2f} cps "
                  f"(error {error:.1%}, target <= 5%); channel cap {cap}: at most "
                  f"{capped_max} channels at once (never above the cap: {capped_max <= cap})")

            obs.reset()
            sid = await hub.campaign(http, "hold", [number(20_000 + i) for i in range(HOLD_CALLS)],
                                     f"{media}/tone40.wav", cps=RATE_CPS, channels=HOLD_CALLS)
            done = await hub.wait(http, sid, 240)
            failed = sum(v for k, v in done["counts"].items() if k != "delivered")
            print(f"(b) simultaneous answered calls with playback: {obs.max_up} held at once, "
                  f"{failed} failed setups of {HOLD_CALLS} (target >= 300 with 0 failures)")

            sid = await hub.campaign(http, "queued",
                                     [number(100_000 + i) for i in range(QUEUED_CALLS)],
                                     f"{media}/tone1.wav", cps=2, channels=2)
            await asyncio.sleep(8)
            rss = rss_mb(hub.voice_pid)
            await hub.call(http, "POST", f"/v1/sessions/{sid}/cancel")
            print(f"(d) controller RSS with {QUEUED_CALLS:,} queued calls: {rss:.0f} MB "
                  "(target <= 200 MB)")
            results = {"raw_cps": raw_rate, "hub_cps": hub_rate, "ratio": hub_rate / raw_rate,
                       "pacing_error": error, "cap_max": capped_max, "held": obs.max_up,
                       "hold_failed": failed, "rss_mb": rss}
    finally:
        hub.stop()
        phones.stop()
        server.shutdown()
        subprocess.run(["bash", script, "down" if not was_running else "hangup-all"])
    return results


if __name__ == "__main__":
    asyncio.run(main())
