"""Voice recovery never dials twice (issue 9): a controller killed and restarted under
another name mid-call, and the database away for longer than the voice lease while calls
are up. The phones' own SIP trace must show no number dialled while an earlier call to it
was live, and no number dialled more often than its attempts say."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
from typing import Any

import pytest
from aiohttp import web

from hub.dev import siplog
from tests.conftest import ASTERISK_ENV, ROOT, Procs, TestPhones
from tests.e2e.test_postgres_restart import CAN_RESTART_PG, pg
from tests.e2e.test_voice import attempts, media, num, tone, voice  # noqa: F401 (fixtures)
from tests.helpers import Api, eventually, local_server

pytestmark = pytest.mark.e2e
LEASE = {"HUB_VOICE_LEASE_S": "4"}


async def phones_saw_each_call_once(api: Api, phones: TestPhones, sid: str) -> None:
    seen = siplog.calls(phones.phones.logs)
    assert siplog.overlapping(seen) == [], "a number was dialled while its first call was live"
    dialled = collections.Counter(c.number for c in seen)
    for address in await api.deliveries(sid):  # this session's numbers (others may share)
        n = dialled.get(address, 0)
        assert n <= len(await attempts(api, sid, address)), f"{address} dialled {n} times"


async def calls_up(api: Api, sid: str, n: int) -> None:
    async def up() -> bool:
        return (await api.session(sid))["counts"].get("in_progress", 0) == n
    await eventually(up, 30, f"{n} calls up")


async def test_controller_restarted_under_another_name_adopts_the_live_call(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs, media: str,  # noqa: F811
) -> None:
    first = procs.start("voice", HUB_VOICE_ID="voice-a", **LEASE)
    created = await api.submit(voice([num(30)], file_url=f"{media}/tone12.wav", retries=2))
    sid = created["sessionId"]
    await calls_up(api, sid, 1)
    await asyncio.sleep(1.0)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    procs.start("voice", HUB_VOICE_ID="voice-b", **LEASE)  # e.g. a recreated container
    done = await api.wait_status(sid, timeout_s=60)
    assert done["counts"] == {"delivered": 1}
    tries = await attempts(api, sid, num(30))
    assert len(tries) == 1 and tries[0]["detail"]["played"] is True  # called once, heard all
    assert len(siplog.calls(phones.phones.logs)) == 1
    await phones_saw_each_call_once(api, phones, sid)


async def test_sigterm_stops_the_controller_cleanly_and_the_next_one_adopts_its_calls(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs, media: str,  # noqa: F811
) -> None:
    """`docker stop`: the controller leaves within seconds with exit code 0 (it writes
    what has ended first), the calls it leaves up are adopted, nobody is dialled twice."""
    first = procs.start("voice", HUB_VOICE_ID="voice-a", **LEASE)
    created = await api.submit(voice([num(70), num(80)], file_url=f"{media}/tone12.wav",
                                     retries=2))
    sid = created["sessionId"]
    await calls_up(api, sid, 2)
    await asyncio.sleep(1.5)  # answered and playing
    first.send_signal(signal.SIGTERM)
    assert first.wait(15) == 0
    assert "SIGTERM: writing what has ended, then leaving" in procs.logs()
    procs.start("voice", HUB_VOICE_ID="voice-b", **LEASE)
    done = await api.wait_status(sid, timeout_s=60)
    assert done["counts"] == {"delivered": 2}
    for n in (70, 80):
        tries = await attempts(api, sid, num(n))
        assert len(tries) == 1 and tries[0]["detail"]["played"] is True
    assert len(siplog.calls(phones.phones.logs)) == 2
    await phones_saw_each_call_once(api, phones, sid)


@pytest.mark.skipif(not CAN_RESTART_PG, reason="needs root and a local Debian PostgreSQL"
                    " cluster (and no HUB_TEST_NO_PG_RESTART)")
@pytest.mark.timeout(180)
async def test_database_away_longer_than_the_voice_lease_never_dials_twice(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs, media: str,  # noqa: F811
) -> None:
    procs.start("voice", **LEASE)
    audience = [num(40), num(50), num(60)]
    created = await api.submit(voice(audience, file_url=f"{media}/tone12.wav", retries=2))
    sid = created["sessionId"]
    await calls_up(api, sid, 3)
    pg("stop")
    try:
        await asyncio.sleep(8)  # twice the lease, while the three calls are up
    finally:
        pg("start")
    done = await api.wait_status(sid, timeout_s=90)
    assert done["counts"] == {"delivered": 3}, done["counts"]
    for address in audience:
        assert len(await attempts(api, sid, address)) == 1
    assert len(siplog.calls(phones.phones.logs)) == 3
    await phones_saw_each_call_once(api, phones, sid)


@pytest.mark.timeout(180)
async def test_asterisk_stopped_while_originating_spends_no_try_on_calls_never_placed(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs,
    media: str,  # noqa: F811
) -> None:
    """Asterisk stops while the dialler is placing calls one a second: an originate that
    never reached it gives the recipient back without an attempt; after the restart every
    recipient is delivered, and no attempt exists that the phones did not see dialled."""
    status, body = await api.call("PATCH", f"/v1/transports/{voice_transport['id']}",
                                  {"config": {"cps": 1}})
    assert status == 200, body
    procs.start("voice")
    audience = [num(10 * i) for i in range(1, 7)]
    created = await api.submit(voice(audience, file_url=f"{media}/tone2.wav", retries=1,
                                     retryIntervalMinutes="0.02"))
    sid = created["sessionId"]
    await eventually(lambda: _now(len(siplog.calls(phones.phones.logs)) >= 2), 30,
                     "two calls placed")
    subprocess.run(["bash", str(ROOT / "scripts" / "asterisk.sh"), "down"], check=True,
                   capture_output=True, timeout=120, env=ASTERISK_ENV)
    await asyncio.sleep(3)
    subprocess.run(["bash", str(ROOT / "scripts" / "asterisk.sh"), "up"], check=True,
                   capture_output=True, timeout=300, env=ASTERISK_ENV)
    done = await api.wait_status(sid, timeout_s=120)
    assert done["counts"] == {"delivered": 6}, done["counts"]
    dialled = collections.Counter(c.number for c in siplog.calls(phones.phones.logs))
    for address in audience:  # every attempt is a call the phone saw
        assert len(await attempts(api, sid, address)) == dialled[address], address
    await phones_saw_each_call_once(api, phones, sid)


async def _now(value: Any) -> Any:
    return value


async def test_failed_audio_is_prepared_again_when_failed_recipients_rerun(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs,
    tone: dict[str, bytes],  # noqa: F811
) -> None:
    """The audio's server answers 404, so the session fails before anyone is called; once
    the file is there, re-running the failed recipients prepares the audio again and
    delivers (and the trunk's dialler kept serving other sessions meanwhile)."""
    available: dict[str, bytes] = {}

    async def serve(request: web.Request) -> web.Response:
        body = available.get(request.match_info["name"])
        return web.Response(body=body, content_type="audio/wav") if body else \
            web.Response(status=404)
    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner, base = await local_server(app)
    try:
        procs.start("voice")
        created = await api.submit(voice([num(10)], file_url=f"{base}/late.wav"))
        sid = created["sessionId"]
        first = await api.wait_status(sid, timeout_s=30)
        assert first["counts"] == {"failed": 1}
        other = await api.submit(voice([num(20)], message="Still calling."))
        assert (await api.wait_status(other["sessionId"], timeout_s=40))["counts"] == {
            "delivered": 1}
        available["late.wav"] = tone["tone2.wav"]
        status, body = await api.post(f"/v1/sessions/{sid}/trigger?includeFailed=true")
        assert status == 202, body
        done = await api.wait_status(sid, timeout_s=40)
        assert done["counts"] == {"delivered": 1}
    finally:
        await runner.cleanup()
