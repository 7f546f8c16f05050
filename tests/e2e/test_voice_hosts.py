"""Carrier limits across apps, controllers and Asterisk hosts (issue 9): two `hub voice`
processes, each driving its own Asterisk (the embedded bed's second instance), share one
PJSIP endpoint's `maxChannels` and `cps`; one Asterisk killed mid-campaign has its calls
recorded and retried through the other, nobody called twice while a call is live."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from hub.dev import siplog
from tests.conftest import ROOT, Procs, TestPhones
from tests.e2e.test_voice import attempts, media, num, tone, voice  # noqa: F401 (fixtures)
from tests.e2e.test_voice_recovery import phones_saw_each_call_once
from tests.helpers import Api, eventually

pytestmark = pytest.mark.e2e
SECOND_ARI = "http://127.0.0.1:8089"
ARIS = ("http://127.0.0.1:8088", SECOND_ARI)
ARI_AUTH = {"Authorization": "Basic " + base64.b64encode(b"hub:hub").decode()}


def second(action: str) -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "asterisk.sh"), action], check=True,
                   capture_output=True, timeout=300, env={"HUB_ASTERISK_INSTANCE": "2",
                                                          "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


@pytest.fixture
def second_asterisk(asterisk: None) -> Iterator[str]:
    second("up")
    try:
        yield SECOND_ARI
    finally:
        second("down")


class Observer:
    """Polls both Asterisks' channel lists: the hub channels live at each poll, and the
    most live at once (`most`, or `most_of` this test's own channels: a channel an
    earlier test left hanging up is not one of this test's calls)."""

    def __init__(self) -> None:
        self.most = 0
        self.polls: list[set[str]] = []
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession(headers=ARI_AUTH) as http:
            while True:
                live: set[str] = set()
                for base in ARIS:
                    try:
                        async with http.get(f"{base}/ari/channels",
                                            timeout=aiohttp.ClientTimeout(total=1)) as r:
                            live |= {c["id"] for c in await r.json() if c["id"].startswith("hub-")}
                    except (aiohttp.ClientError, TimeoutError, ValueError):
                        pass
                self.polls.append(live)
                self.most = max(self.most, len(live))
                await asyncio.sleep(0.05)

    def most_of(self, channels: set[str]) -> int:
        return max((len(live & channels) for live in self.polls), default=0)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def observer() -> AsyncIterator[Observer]:
    seen = Observer()
    seen.start()
    yield seen
    await seen.stop()


async def trunk_for(api: Api, **config: Any) -> None:
    status, body = await api.post("/v1/transports", {"name": "shared", "type": "voice",
        "config": {"trunk": "trunk", "callerId": "+9771000000", "ringTimeoutS": 5, **config}})
    assert status == 201, body


@pytest.mark.timeout(180)
async def test_two_apps_and_two_controllers_hold_one_trunks_limits(
    api: Api, make_app: Any, phones: TestPhones, procs: Procs, media: str,  # noqa: F811
    second_asterisk: str, observer: Observer,
) -> None:
    other = Api(api.http, api.base, await make_app("beta"))
    for app in (api, other):
        await trunk_for(app, maxChannels=4, cps=2)
    procs.start("voice", HUB_VOICE_ID="voice-1")
    procs.start("voice", HUB_VOICE_ID="voice-2", HUB_ARI_URL=second_asterisk)
    sids = []
    for app, first in ((api, 0), (other, 50)):
        busy = [num(first + 10 * i + 1) for i in range(4)]          # 486 at once: cps binds
        answered = [num(first + 10 * i) for i in range(1, 4)]      # ~2.5 s calls: the cap binds
        created = await app.submit(voice(busy + answered, file_url=f"{media}/tone2.wav"))
        sids.append((app, created["sessionId"]))
    for app, sid in sids:
        await app.wait_status(sid, timeout_s=120)
    calls = siplog.calls(phones.phones.logs)
    assert len(calls) == 14
    starts = sorted(c.start for c in calls)
    rate = (len(starts) - 1) / (starts[-1] - starts[0])
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    print(f"\n14 calls through two controllers: {rate:.2f} calls/s, smallest gap {min(gaps):.3f}s,"
          f" at most {observer.most} live")
    ours = {a["providerRef"] for app, sid in sids for address in await app.deliveries(sid)
            for a in await attempts(app, sid, address) if a["providerRef"]}
    assert len(ours) >= 14  # each call's channel, named after its attempt
    assert observer.most_of(ours) <= 4
    assert rate <= 2 * 1.05, rate
    assert min(gaps) >= 0.5 - 0.06, gaps
    for app, sid in sids:
        await phones_saw_each_call_once(app, phones, sid)


@pytest.mark.timeout(240)
async def test_an_asterisk_killed_mid_campaign_has_its_calls_retried_through_the_other(
    api: Api, phones: TestPhones, procs: Procs, media: str,  # noqa: F811
    second_asterisk: str, observer: Observer,
) -> None:
    await trunk_for(api, maxChannels=8, cps=1)  # small claims: both controllers dial
    lease = {"HUB_VOICE_LEASE_S": "4"}
    procs.start("voice", HUB_VOICE_ID="voice-1", **lease)
    procs.start("voice", HUB_VOICE_ID="voice-2", HUB_ARI_URL=second_asterisk, **lease)
    audience = [num(10 * i) for i in range(1, 9)]
    created = await api.submit(voice(audience, file_url=f"{media}/tone12.wav", retries=2,
                                     retryIntervalMinutes="0.02"))
    sid = created["sessionId"]

    async def on_the_second() -> bool:
        async with aiohttp.ClientSession(headers=ARI_AUTH) as http:
            async with http.get(f"{SECOND_ARI}/ari/channels") as r:
                return any(c["id"].startswith("hub-") and c["state"] == "Up"
                           for c in await r.json())
    await eventually(on_the_second, 60, "a call up on the second Asterisk")
    killed = time.monotonic()
    second("down")
    done = await api.wait_status(sid, timeout_s=180)
    print(f"\nall delivered {time.monotonic() - killed:.1f}s after the second Asterisk died;"
          f" at most {observer.most} live")
    assert done["counts"] == {"delivered": 8}, done["counts"]
    assert observer.most <= 8
    await phones_saw_each_call_once(api, phones, sid)
