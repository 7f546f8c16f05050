"""Voice broadcasts end to end: `hub api` + `hub voice` processes, the embedded Asterisk,
SIPp phones behind the trunk, and an RTP counter standing for what the phones hear."""

from __future__ import annotations

import asyncio
import base64
import signal
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hub.config import Settings
from hub.dev import siplog
from tests.conftest import ARI_URL, ASTERISK_ENV, ROOT, Procs, TestPhones
from tests.helpers import Api, eventually, free_port, local_server

pytestmark = pytest.mark.e2e
NUMBER = "+97798123456{:02d}"  # Nepali mobiles; the last digit picks the phone's behaviour


def num(i: int) -> str:
    return NUMBER.format(i)


@pytest.fixture(scope="session")
def tone(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("media")
    files = {}
    for name, seconds in (("tone2.wav", 2.0), ("tone6.wav", 6.0), ("tone12.wav", 12.0)):
        path = folder / name
        subprocess.run(["sox", "-n", "-r", "16000", "-c", "2", str(path), "synth", str(seconds),
                        "sine", "440", "vol", "0.5"], check=True)
        files[name] = path.read_bytes()
    mp3 = folder / "tone2.mp3"
    subprocess.run(["sox", str(folder / "tone2.wav"), "-C", "64", str(mp3)], check=True)
    files["tone2.mp3"] = mp3.read_bytes()
    return files


@pytest.fixture
async def media(tone: dict[str, bytes]) -> AsyncIterator[str]:
    async def serve(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name in tone:
            kind = "audio/mpeg" if name.endswith(".mp3") else "audio/wav"
            return web.Response(body=tone[name], content_type=kind)
        if name == "notes.txt":
            return web.Response(text="not audio", content_type="text/plain")
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner, base = await local_server(app)
    yield base
    await runner.cleanup()


def voice(audience: list[str], *, file_url: str | None = None, message: str | None = None,
          extras: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    transport: dict[str, Any] = {"type": "voice"}
    if file_url:
        transport["fileUrl"] = file_url
    if message:
        transport["message"] = message
    if extras:
        transport["extras"] = extras
    return {"transport": transport, "audience": audience, "options": options}


async def attempts(api: Api, sid: str, address: str) -> list[dict[str, Any]]:
    status, body = await api.get(f"/v1/sessions/{sid}/deliveries/{address}/attempts")
    assert status == 200, body
    return list(body["items"])


@pytest.mark.parametrize("audio", ["tone2.wav", "tone2.mp3"])
async def test_answered_call_hears_the_whole_file(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs, media: str,
    audio: str,
) -> None:
    procs.start("voice")
    created = await api.submit(voice([num(10)], file_url=f"{media}/{audio}"))
    done = await api.wait_status(created["sessionId"], timeout_s=40)
    assert done["counts"] == {"delivered": 1}
    [attempt] = await attempts(api, created["sessionId"], num(10))
    detail = attempt["detail"]
    assert attempt["outcome"] == "answered" and detail["played"] is True
    assert detail["cause"] == 16 and detail["causeText"] == "Normal clearing"
    assert 1.9 <= detail["talkS"] <= 4.0, detail
    [(packets, seconds)] = phones.rtp.summary()
    assert 85 <= packets <= 130, packets      # 2 s of 20 ms frames = 100 packets
    assert 1.7 <= seconds <= 2.6, seconds
    row = (await api.deliveries(created["sessionId"]))[num(10)]
    assert row["durationS"] == detail["talkS"]


async def test_asterisk_sends_the_controller_only_the_events_it_acts_on(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs, media: str,
    settings: Settings,
) -> None:
    """A call raises some twenty ARI events; the controller asks Asterisk (per app event
    filter) for the five kinds it acts on (its REST requests' answers come on websockets
    of their own), and its calls still go through whole."""
    procs.start("voice")
    token = base64.b64encode(f"{settings.ari_user}:{settings.ari_password}".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"}) as http:
        async def allowed() -> set[str] | None:
            async with http.get(f"{ARI_URL}/ari/applications/hub") as resp:
                if resp.status != 200:
                    return None
                found = {e["type"] for e in (await resp.json()).get("events_allowed", [])}
                return found or None

        assert await eventually(allowed, 20, "the hub app's event filter") == {
            "StasisStart", "ChannelDtmfReceived", "ChannelVarset", "ChannelDestroyed",
            "PlaybackFinished"}
        created = await api.submit(voice([num(10), num(20)], file_url=f"{media}/tone2.wav"))
        done = await api.wait_status(created["sessionId"], timeout_s=40)
        assert done["counts"] == {"delivered": 2}
        # Its channels carry HUB_HANGUP_BY (ari.conf channelvars): no ChannelVarset since.
        assert await allowed() == {
            "StasisStart", "ChannelDtmfReceived", "ChannelDestroyed", "PlaybackFinished"}
    for n in (10, 20):
        [attempt] = await attempts(api, created["sessionId"], num(n))
        assert attempt["outcome"] == "answered" and attempt["detail"]["played"] is True
        assert attempt["detail"]["talkS"] >= 1.9
    assert "Asterisk takes REST requests on websockets" in procs.logs()


async def test_each_app_keeps_its_own_do_not_contact_list(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs, media: str,
    make_app: Any, http: aiohttp.ClientSession,
) -> None:
    """The dialler checks a whole claimed round at once (two sessions of one app here):
    the number this app opted out is not dialled in either session, its other number is,
    and another app on the same trunk still calls the opted-out number."""
    status, body = await api.post("/v1/suppressions", {"addresses": [num(40)],
                                                        "transport": "voice"})
    assert status in (200, 201), body
    other = Api(http, api.base, await make_app("beta"))
    status, body = await other.post("/v1/transports", {
        "name": "beta-trunk", "type": "voice",
        "config": {"trunk": "trunk", "callerId": "+9771000001", "maxChannels": 20, "cps": 20,
                   "ringTimeoutS": 5}})
    assert status == 201, body
    tone2 = f"{media}/tone2.wav"
    first = (await api.submit(voice([num(40), num(50)], file_url=tone2)))["sessionId"]
    second = (await api.submit(voice([num(40)], file_url=tone2)))["sessionId"]
    theirs = (await other.submit(voice([num(40)], file_url=tone2)))["sessionId"]
    procs.start("voice")  # every session is due at once: one round claims both of ours
    for client, sid in ((api, first), (api, second), (other, theirs)):
        await client.wait_status(sid, timeout_s=60)
    rows = await api.deliveries(first)
    assert rows[num(40)]["outcome"] == "suppressed" and rows[num(40)]["providerRef"] is None
    assert rows[num(50)]["status"] == "delivered"
    [row] = (await api.deliveries(second)).values()
    assert row["outcome"] == "suppressed" and row["providerRef"] is None
    [row] = (await other.deliveries(theirs)).values()
    assert row["status"] == "delivered"
    dialled = [c.number for c in siplog.calls(phones.phones.logs)]
    assert sorted(dialled) == sorted([num(40), num(50)]), dialled


async def test_outcomes_follow_the_retry_policy(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs,
) -> None:
    procs.start("voice")
    audience = [num(i) for i in (11, 12, 13, 14, 15, 16)]
    created = await api.submit(voice(audience, message="Hello. This is a short test.",
                                     retries=1, retryIntervalMinutes="0.02"))
    sid = created["sessionId"]
    await api.wait_status(sid, timeout_s=60)
    rows = await api.deliveries(sid)
    expected = {  # address: (outcome, attempts)
        num(11): ("busy", 2), num(12): ("no_answer", 2), num(13): ("invalid_number", 1),
        num(14): ("congestion", 2), num(15): ("rejected", 1), num(16): ("answered", 2),
    }
    assert {a: (r["outcome"], r["attempts"]) for a, r in rows.items()} == expected
    assert {r["status"] for r in rows.values()} == {"failed"}
    causes = {a: (await attempts(api, sid, a))[0]["detail"] for a in audience}
    assert (causes[num(11)]["cause"], causes[num(11)]["sipCode"]) == (17, 486)
    assert (causes[num(12)]["cause"], causes[num(12)]["sipCode"]) == (19, 480)
    assert causes[num(12)]["ringS"] >= 4.5
    assert causes[num(13)]["cause"] == 1 and causes[num(15)]["cause"] == 21
    assert causes[num(16)]["played"] is False and causes[num(16)]["talkS"] >= 0.8
    status, report = await api.get(f"/v1/sessions/{sid}/report")
    assert report["attempts"] == 10 and report["byOutcome"]["answered"] == 2
    assert report["voice"]["asr"] == pytest.approx(0.2)
    assert {c["cause"]: c["calls"] for c in report["voice"]["hangupCauses"]}[17] == 2


async def test_busy_number_retried_on_schedule_then_delivered(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs,
) -> None:
    procs.start("voice")
    created = await api.submit(voice([num(21)], message="Hello again.", retries=2,
                                     retryIntervalMinutes="0.1"))
    sid = created["sessionId"]

    async def first_done() -> bool:
        return (await api.deliveries(sid))[num(21)]["status"] == "retry_scheduled"
    await eventually(first_done, 20, "the busy attempt")
    phones.start(busy="x")  # the line is free now
    await api.wait_status(sid, timeout_s=40)
    tries = await attempts(api, sid, num(21))
    assert [a["outcome"] for a in tries] == ["busy", "answered"]
    from datetime import datetime

    gap = (datetime.fromisoformat(tries[1]["startedAt"])
           - datetime.fromisoformat(tries[0]["endedAt"])).total_seconds()
    assert 6.0 <= gap <= 9.0, gap  # 0.1 min, rounded up to the scheduler's second
    assert (await api.deliveries(sid))[num(21)]["status"] == "delivered"


async def test_dtmf_menu_answers_and_opt_out(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs,
) -> None:
    procs.start("voice")
    menu = {"timeoutS": 8, "options": {"1": {"say": "Thank you."},
                                       "9": {"say": "Goodbye.", "optOut": True}}}
    created = await api.submit(voice([num(37), num(38)], message="Hi.", extras={"menu": menu}))
    sid = created["sessionId"]
    await api.wait_status(sid, timeout_s=60)
    assert (await attempts(api, sid, num(37)))[0]["detail"]["dtmf"] == "1"
    assert (await attempts(api, sid, num(38)))[0]["detail"]["dtmf"] == "9"
    status, listed = await api.get(f"/v1/suppressions?address=%2B{num(38)[1:]}")
    assert [s["transport"] for s in listed["items"]] == ["voice"]
    again = await api.submit(voice([num(38)], message="Hi again."))
    await api.wait_status(again["sessionId"], timeout_s=30)
    [row] = (await api.deliveries(again["sessionId"])).values()
    assert row["outcome"] == "suppressed" and row["status"] == "failed"
    assert row["providerRef"] is None  # never dialled


async def test_broken_file_url_fails_before_anyone_is_called(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs, media: str,
) -> None:
    procs.start("voice")
    for bad, why in ((f"{media}/missing.wav", "HTTP 404"), (f"{media}/notes.txt", "content type")):
        created = await api.submit(voice([num(40)], file_url=bad, retries=3))
        done = await api.wait_status(created["sessionId"], timeout_s=30)
        assert done["counts"] == {"failed": 1}
        [row] = (await api.deliveries(created["sessionId"])).values()
        assert row["attempts"] == 0 and why in row["error"], row
    assert phones.rtp.summary() == []


async def test_cancel_mid_campaign_lets_calls_in_progress_finish(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs,
) -> None:
    await api.call("PATCH", f"/v1/transports/{voice_transport['id']}",
                   {"config": {"maxChannels": 2, "cps": 2}})
    procs.start("voice")
    audience = [f"+977981{i:06d}2" for i in range(10)]  # all ring and never answer
    created = await api.submit(voice(audience, message="Hello."))
    sid = created["sessionId"]

    async def ringing() -> bool:
        counts = (await api.session(sid))["counts"]
        return counts.get("in_progress", 0) == 2
    await eventually(ringing, 20, "two calls ringing")
    status, body = await api.post(f"/v1/sessions/{sid}/cancel")
    assert status == 202
    done = await api.wait_status(sid, ("cancelled",), timeout_s=30)
    await eventually(lambda: _ended(api, sid), 20, "in-flight calls to finish")
    rows = await api.deliveries(sid)
    finished = [r for r in rows.values() if r["attempts"] == 1]
    assert len(finished) == 2 and {r["outcome"] for r in finished} == {"no_answer"}
    assert sum(1 for r in rows.values() if r["status"] == "cancelled") == 10 - len(
        [r for r in finished if r["status"] == "failed"])
    assert done["status"] == "cancelled"


async def _ended(api: Api, sid: str) -> bool:
    return bool((await api.session(sid))["endedAt"])


async def test_pause_and_resume_a_campaign(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs,
) -> None:
    procs.start("voice")
    created = await api.submit(voice([num(60)], message="Paused.", trigger="manual"))
    sid = created["sessionId"]
    await api.post(f"/v1/sessions/{sid}/trigger")
    await api.post(f"/v1/sessions/{sid}/pause")
    await asyncio.sleep(2)
    assert (await api.session(sid))["counts"] == {"pending": 1}
    await api.post(f"/v1/sessions/{sid}/resume")
    done = await api.wait_status(sid, timeout_s=30)
    assert done["counts"] == {"delivered": 1}


async def test_asterisk_restart_mid_campaign_loses_no_call(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs, media: str,
) -> None:
    procs.start("voice")
    audience = [num(70), num(80), num(90)]
    created = await api.submit(voice(audience, file_url=f"{media}/tone6.wav", retries=2,
                                     retryIntervalMinutes="0.02"))
    sid = created["sessionId"]

    async def calls_up() -> bool:
        return (await api.session(sid))["counts"].get("in_progress", 0) == 3
    await eventually(calls_up, 20, "three calls up")
    await asyncio.sleep(1.5)
    subprocess.run(["bash", str(ROOT / "scripts" / "asterisk.sh"), "restart"], check=True,
                   capture_output=True, timeout=120, env=ASTERISK_ENV)
    done = await api.wait_status(sid, timeout_s=90)
    assert done["counts"] == {"delivered": 3}
    for address in audience:
        tries = await attempts(api, sid, address)
        assert len(tries) == 2 and tries[-1]["detail"]["played"] is True
        assert tries[0]["outcome"] in ("answered", "failed") and not tries[0]["detail"]["played"]


async def test_controller_killed_mid_call_adopts_it_after_restart(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs, media: str,
) -> None:
    controller = procs.start("voice")
    created = await api.submit(voice([num(20)], file_url=f"{media}/tone6.wav", retries=1))
    sid = created["sessionId"]

    async def call_up() -> bool:
        return (await api.session(sid))["counts"].get("in_progress", 0) == 1
    await eventually(call_up, 20, "the call to be up")
    await asyncio.sleep(1.0)
    controller.send_signal(signal.SIGKILL)
    controller.wait(10)
    procs.start("voice")
    done = await api.wait_status(sid, timeout_s=40)
    assert done["counts"] == {"delivered": 1}
    tries = await attempts(api, sid, num(20))
    assert len(tries) == 1 and tries[0]["detail"]["played"] is True  # called once, heard all
    assert len(phones.rtp.summary()) == 1



async def test_operator_views_and_metrics(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs, media: str,
) -> None:
    from tests.e2e.test_process_metrics import scrape, serving

    voice_metrics = f"http://127.0.0.1:{free_port()}/metrics"
    procs.start("voice", HUB_VOICE_METRICS_PORT=voice_metrics.split(":")[2].split("/")[0])
    created = await api.submit(voice([num(30)], file_url=f"{media}/tone6.wav"))

    async def up() -> bool:
        return (await api.session(created["sessionId"]))["counts"].get("in_progress") == 1
    await eventually(up, 20, "the call to be up")
    await asyncio.sleep(1.5)
    # The controller's own metrics: ARI and AMI logged in, the live call on its trunk.
    await serving(api.http, voice_metrics)

    async def connected() -> bool:
        got = await scrape(api.http, voice_metrics)
        return got[("hub_ari_connected", ())] == 1 and got[("hub_ami_connected", ())] == 1
    await eventually(connected, 10, "ARI and AMI connected in the voice metrics")
    got = await scrape(api.http, voice_metrics)
    assert got[("hub_voice_calls_active", (("trunk", "test-trunk"),))] == 1, got
    env = {"HUB_ARI_URL": ARI_URL}
    trunks = _hub_json("trunks", **env)
    assert [t["activeCalls"] for t in trunks if t["endpoint"] == "trunk"] == [1]
    calls = _hub_json("calls", **env)
    assert len(calls) == 1 and calls[0]["id"].startswith("hub-") and calls[0]["state"] == "Up"
    async with api.http.get(api.base + "/metrics") as resp:
        text = await resp.text()
    assert 'hub_calls_active{trunk="test-trunk"} 1' in text
    await api.wait_status(created["sessionId"], timeout_s=30)
    [row] = (await api.deliveries(created["sessionId"])).values()
    assert row["providerRef"] == calls[0]["id"]
    async def idle() -> bool:  # the gauge is published every second
        got = await scrape(api.http, voice_metrics)
        return got[("hub_voice_calls_active", (("trunk", "test-trunk"),))] == 0
    await eventually(idle, 5, "the trunk's active calls back to 0")
    got = await scrape(api.http, voice_metrics)
    assert got[("hub_voice_call_setup_seconds_count", ())] == 1, got


def _hub_json(*args: str, **env: str) -> Any:
    import json
    import sys

    from tests.conftest import base_env

    out = subprocess.run([sys.executable, "-m", "hub.cli.main", *args, "--json"], cwd=ROOT,
                         env=base_env(**env), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize(("on_machine", "status", "per_session"),
                         [("hangup", "failed", False), ("play", "delivered", True)])
async def test_answering_machine_detected(
    api: Api, phones: TestPhones, procs: Procs, on_machine: str, status: str, per_session: bool,
) -> None:
    amd = {"enabled": True, "onMachine": on_machine}
    http_status, trunk = await api.post("/v1/transports", {
        "name": "amd-trunk", "type": "voice", "config": {
            "trunk": "trunk", "cps": 10, "ringTimeoutS": 5, "amd": {} if per_session else amd}})
    assert http_status == 201, trunk
    procs.start("voice")
    created = await api.submit(voice([num(19), num(10)], message="Hello.", retries=2,
                                     retryIntervalMinutes="0.02",
                                     extras={"amd": amd} if per_session else None))
    await api.wait_status(created["sessionId"], timeout_s=60)
    rows = await api.deliveries(created["sessionId"])
    machine = rows[num(19)]
    assert (machine["outcome"], machine["status"], machine["attempts"]) == ("machine", status, 1)
    assert machine["detail"]["amd"] == "MACHINE"
    assert rows[num(10)]["outcome"] == "answered"  # a silent listener is not a machine


async def test_calling_window_defers_without_spending_an_attempt(
    api: Api, phones: TestPhones, procs: Procs,
) -> None:
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    local = datetime.now(UTC).astimezone(ZoneInfo("Asia/Kathmandu"))
    start, end = local + timedelta(hours=2), local + timedelta(hours=3)
    if end.date() != start.date():  # keep the window inside one local day
        start, end = local - timedelta(hours=3), local - timedelta(hours=2)
    window = {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}
    status, body = await api.post("/v1/transports", {"name": "windowed", "type": "voice",
        "config": {"trunk": "trunk", "callingWindow": window, "timeZone": "Asia/Kathmandu"}})
    assert status == 201, body
    procs.start("voice")
    created = await api.submit(voice([num(10)], message="Not now."))

    async def deferred() -> dict[str, Any] | None:
        row = (await api.deliveries(created["sessionId"]))[num(10)]
        return row if row["status"] == "retry_scheduled" else None
    row = await eventually(deferred, 20, "the delivery to wait for the window")
    assert row["attempts"] == 0 and "outside the calling window" in row["error"]
    opens = datetime.fromisoformat(row["nextAttemptAt"]).astimezone(ZoneInfo("Asia/Kathmandu"))
    assert opens.strftime("%H:%M") == window["start"] and opens > datetime.now(UTC)
    assert phones.rtp.summary() == []
